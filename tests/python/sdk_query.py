"""Microsoft's azure-iot-hub SDK querying a muster node.

Run by tests/tests/azure_sdk_query.rs with the connection string muster wrote (argv[1]) and the
ids of registered devices that a simulated fleet answers for (argv[2], comma-separated; each
has the tag `sdk` = 'q'); REQUESTS_CA_BUNDLE names muster's CA.

* `query_iot_hub` over `devices` in pages of 2 (several pages, every device once);
* `create_scheduled_job`: a method job, run to completion on the fleet, then `query_iot_hub`
  over `devices.jobs` in pages of 2: every device of the job with its method response;
* `create_scheduled_job`: a twin job, run to completion, the tag visible in `get_twin`;
* a method job scheduled an hour ahead: `get_scheduled_job`, `query_scheduled_jobs` by type and
  status, `cancel_scheduled_job`.

Prints one line per step and exits non-zero on the first surprise.
"""

import datetime
import sys
import time

from azure.iot.hub import IoTHubJobManager, IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, JobRequest, QuerySpecification, Twin

PATIENCE_SECS = 30


def fail(*what) -> None:
    print("UNEXPECTED", *what, flush=True)
    sys.exit(1)


def query_all(registry, text, page):
    """Every page of a query: (pages, items, item type of the last page)."""
    items, token, pages, kind = [], None, 0, None
    while True:
        result = registry.query_iot_hub(QuerySpecification(query=text), token, page)
        pages += 1
        kind = result.type
        if len(result.items) > page:
            fail("page larger than asked", len(result.items))
        items.extend(result.items)
        token = result.continuation_token
        if not token:
            return pages, items, kind
        if pages > 100:
            fail("paging does not end")


def wait_status(jobs, job_id, status):
    deadline = time.monotonic() + PATIENCE_SECS
    while True:
        job = jobs.get_scheduled_job(job_id)
        if job.status == status:
            return job
        if time.monotonic() > deadline:
            fail("job", job_id, "stayed", job.status)
        time.sleep(0.2)


def main() -> int:
    conn, devices = sys.argv[1], sys.argv[2].split(",")
    registry = IoTHubRegistryManager.from_connection_string(conn)
    jobs = IoTHubJobManager.from_connection_string(conn)
    now = datetime.datetime.now(datetime.timezone.utc)

    # Twins, two per page.
    pages, items, kind = query_all(registry, "SELECT * FROM devices WHERE tags.sdk = 'q'", 2)
    ids = [t.device_id for t in items]
    print("devices", pages, "pages", len(ids), "twins", kind, flush=True)
    if ids != sorted(devices) or kind != "twin" or pages < 2:
        fail(ids, kind, pages)
    pages, items, kind = query_all(registry, "SELECT COUNT() AS n FROM devices", 100)
    print("count", items[0].additional_properties.get("n"), kind, flush=True)

    # A method job that really runs on the fleet, then its devices.jobs rows.
    method_job = "sdk-q-method"
    jobs.create_scheduled_job(
        method_job,
        JobRequest(
            job_id=method_job,
            type="scheduleDeviceMethod",
            cloud_to_device_method=CloudToDeviceMethod(
                method_name="reboot", payload={"delay": 0}, response_timeout_in_seconds=10
            ),
            query_condition="tags.sdk = 'q'",
            start_time=now,
            max_execution_time_in_seconds=300,
        ),
    )
    done = wait_status(jobs, method_job, "completed")
    stats = done.device_job_statistics
    print("method job", done.status, stats.device_count, stats.succeeded_count, flush=True)
    query = "SELECT * FROM devices.jobs WHERE devices.jobs.jobId = '{}'".format(method_job)
    pages, items, kind = query_all(registry, query, 2)
    rows = [(i.device_id, i.status, i.additional_properties) for i in items]
    if kind != "deviceJob" or [r[0] for r in rows] != sorted(devices) or pages < 2:
        fail(kind, rows, pages)
    for device, status, extra in rows:
        response = (extra.get("outcome") or {}).get("deviceMethodResponse") or {}
        if (
            status != "completed"
            or extra.get("jobId") != method_job
            or extra.get("jobType") != "scheduleDeviceMethod"
            or response.get("status") != 200
            or (response.get("payload") or {}).get("device") != device
        ):
            fail("device job row", device, status, extra)
    print("device jobs", pages, "pages", len(rows), "rows", kind, "all answered 200", flush=True)

    # A twin job.
    twin_job = "sdk-q-twin"
    jobs.create_scheduled_job(
        twin_job,
        JobRequest(
            job_id=twin_job,
            type="scheduleUpdateTwin",
            update_twin=Twin(tags={"ring": "sdk"}),
            query_condition="tags.sdk = 'q'",
            start_time=now,
            max_execution_time_in_seconds=300,
        ),
    )
    done = wait_status(jobs, twin_job, "completed")
    twin = registry.get_twin(devices[0])
    print("twin job", done.status, "ring", twin.tags.get("ring"), flush=True)
    if twin.tags.get("ring") != "sdk":
        fail(twin.tags)

    # A job an hour ahead: read, query by type and status, cancel.
    later = "sdk-q-later"
    jobs.create_scheduled_job(
        later,
        JobRequest(
            job_id=later,
            type="scheduleDeviceMethod",
            cloud_to_device_method=CloudToDeviceMethod(method_name="reboot", payload={}),
            query_condition="tags.sdk = 'q'",
            start_time=now + datetime.timedelta(hours=1),
            max_execution_time_in_seconds=3600,
        ),
    )
    got = jobs.get_scheduled_job(later)
    print("got", got.job_id, got.type, got.status, flush=True)
    scheduled = jobs.query_scheduled_jobs("scheduleDeviceMethod", "scheduled")
    found = [j["jobId"] for j in scheduled.items]
    print("query scheduled", scheduled.type, found, flush=True)
    if found != [later]:
        fail(found)
    twins_done = jobs.query_scheduled_jobs("scheduleUpdateTwin", "completed")
    found = [j["jobId"] for j in twins_done.items]
    print("query completed twin jobs", found, flush=True)
    if found != [twin_job]:
        fail(found)
    methods = jobs.query_scheduled_jobs("scheduleDeviceMethod", None)
    found = sorted(j["jobId"] for j in methods.items)
    print("query method jobs", found, flush=True)
    if found != sorted([method_job, later]):
        fail(found)
    cancelled = jobs.cancel_scheduled_job(later)
    print("cancelled", cancelled.job_id, cancelled.status, flush=True)
    found = [j["jobId"] for j in jobs.query_scheduled_jobs(None, "cancelled").items]
    if cancelled.status != "cancelled" or found != [later]:
        fail(cancelled.status, found)
    print("all done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
