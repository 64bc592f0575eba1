"""Microsoft's azure-iot-hub SDK against a muster node.

Run by tests/tests/azure_sdk.rs with the connection string muster wrote (argv[1]) and a job id
(argv[2]); REQUESTS_CA_BUNDLE names muster's CA. Creates a scheduled method job, reads it back,
cancels it; then the same connection string with a wrong key must be refused with 401. Prints one
line per step and exits non-zero on the first surprise.
"""

import datetime
import sys

from azure.iot.hub import IoTHubJobManager
from azure.iot.hub.models import CloudToDeviceMethod, JobRequest
from msrest.exceptions import HttpOperationError


def main() -> int:
    conn, job_id = sys.argv[1], sys.argv[2]
    jobs = IoTHubJobManager.from_connection_string(conn)
    request = JobRequest(
        job_id=job_id,
        type="scheduleDeviceMethod",
        cloud_to_device_method=CloudToDeviceMethod(
            method_name="reboot", payload={"delay": 5}, response_timeout_in_seconds=30
        ),
        query_condition="tags.building = '43'",
        # Later than the test runs: the job waits scheduled, so it can be cancelled.
        start_time=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        max_execution_time_in_seconds=3600,
    )
    created = jobs.create_scheduled_job(job_id, request)
    print("created", created.job_id, created.status, flush=True)
    got = jobs.get_scheduled_job(job_id)
    print("got", got.job_id, got.type, got.status, flush=True)
    if got.job_id != job_id or got.type != "scheduleDeviceMethod":
        print("unexpected job", got, flush=True)
        return 1
    cancelled = jobs.cancel_scheduled_job(job_id)
    print("cancelled", cancelled.job_id, cancelled.status, flush=True)
    if cancelled.status != "cancelled":
        return 1

    # The same host and policy with a key that is not the policy's.
    parts = dict(p.split("=", 1) for p in conn.split(";"))
    wrong = "HostName={};SharedAccessKeyName={};SharedAccessKey={}".format(
        parts["HostName"], parts["SharedAccessKeyName"], "A" * 43 + "="
    )
    try:
        IoTHubJobManager.from_connection_string(wrong).get_scheduled_job(job_id)
    except HttpOperationError as e:
        status = e.response.status_code
        print("wrong key", status, flush=True)
        return 0 if status == 401 else 1
    print("wrong key was accepted", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
