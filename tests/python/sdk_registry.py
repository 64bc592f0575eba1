"""Microsoft's azure-iot-hub SDK drives muster's device registry and twins.

Run by tests/tests/sdk_registry.rs with the connection string muster wrote (argv[1]);
REQUESTS_CA_BUNDLE names muster's CA. IoTHubRegistryManager creates devices with SAS keys (given
and generated), reads, updates (disabled with a reason, by etag), lists and deletes them, reads,
patches and replaces twins by etag, and gets IoT Hub's errors for a missing device, a taken id
and a stale etag. Prints one line per step and exits non-zero on the first surprise.
"""

import base64
import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

PRIMARY = base64.b64encode(bytes(range(32))).decode()
SECONDARY = base64.b64encode(bytes(range(32, 64))).decode()


class Surprise(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Surprise(what)


def expect_error(what, status, code, call):
    """Runs `call`, which must fail with `status` and IoT Hub's error `code` (header and body)."""
    try:
        call()
    except HttpOperationError as e:
        r = e.response
        body = r.json()
        print(what, r.status_code, r.headers.get("iothub-errorcode"), flush=True)
        check(r.status_code == status, f"{what}: status {r.status_code}, body {body}")
        check(r.headers.get("iothub-errorcode") == code, f"{what}: header {r.headers}")
        check(body["Message"].startswith(f"ErrorCode:{code};"), f"{what}: body {body}")
        check("Tracking ID:" in body["ExceptionMessage"], f"{what}: body {body}")
        return
    raise Surprise(f"{what}: no error")


def main() -> int:
    rm = IoTHubRegistryManager.from_connection_string(sys.argv[1])

    # Keys given by the caller are kept as given.
    d1 = rm.create_device_with_sas("sdk-dev-1", PRIMARY, SECONDARY, "enabled")
    keys = d1.authentication.symmetric_key
    print("created", d1.device_id, d1.status, d1.authentication.type, flush=True)
    check((keys.primary_key, keys.secondary_key) == (PRIMARY, SECONDARY), "given keys")
    check(d1.etag and d1.generation_id, "etag and generationId")
    check(d1.connection_state == "Disconnected", "connectionState")
    check(d1.cloud_to_device_message_count == 0, "cloudToDeviceMessageCount")
    check(d1.capabilities.iot_edge is False, "capabilities")

    # Keys left out are generated: 32 random bytes each, different from each other.
    d2 = rm.create_device_with_sas("sdk-dev-2", None, None, "enabled")
    gen = d2.authentication.symmetric_key
    print("generated keys", len(base64.b64decode(gen.primary_key)), flush=True)
    check(len(base64.b64decode(gen.primary_key)) == 32, "generated primary key")
    check(len(base64.b64decode(gen.secondary_key)) == 32, "generated secondary key")
    check(gen.primary_key != gen.secondary_key, "two different keys")

    expect_error(
        "taken id",
        409,
        "DeviceAlreadyExists",
        lambda: rm.create_device_with_sas("sdk-dev-1", None, None, "enabled"),
    )

    got = rm.get_device("sdk-dev-1")
    check(got.etag == d1.etag, "get shows the same etag")

    # Disable by etag, with a reason; the etag moves on and a stale one is refused.
    off = rm.update_device_with_sas(
        "sdk-dev-1", got.etag, PRIMARY, SECONDARY, "disabled", status_reason="maintenance"
    )
    print("updated", off.status, off.status_reason, flush=True)
    check(off.status == "disabled" and off.status_reason == "maintenance", "disabled")
    check(off.etag != got.etag, "new etag")
    check(off.status_updated_time.year > 2000, "statusUpdatedTime")
    expect_error(
        "stale device etag",
        412,
        "PreconditionFailed",
        lambda: rm.update_device_with_sas(
            "sdk-dev-1", got.etag, PRIMARY, SECONDARY, "enabled"
        ),
    )
    check(rm.get_device("sdk-dev-1").status == "disabled", "the stale update changed nothing")

    listed = [d.device_id for d in rm.get_devices()]
    print("listed", listed, flush=True)
    check({"sdk-dev-1", "sdk-dev-2"} <= set(listed), "both listed")
    check(len(rm.get_devices(1)) == 1, "top")

    # Twins: patch and replace by etag.
    twin = rm.get_twin("sdk-dev-1")
    print("twin", twin.etag, twin.version, twin.status, flush=True)
    check(twin.status == "disabled", "twin shows the status")
    patched = rm.update_twin(
        "sdk-dev-1",
        Twin(tags={"site": "b43"}, properties=TwinProperties(desired={"fw": "2.0"})),
        twin.etag,
    )
    check(patched.tags == {"site": "b43"}, f"tags {patched.tags}")
    check(patched.properties.desired["fw"] == "2.0", "desired fw")
    check(patched.etag != twin.etag, "twin etag moves")
    meta = patched.properties.desired["$metadata"]
    check("$lastUpdated" in meta["fw"], f"metadata {meta}")
    expect_error(
        "stale twin etag",
        412,
        "PreconditionFailed",
        lambda: rm.update_twin("sdk-dev-1", Twin(tags={"site": "x"}), twin.etag),
    )
    replaced = rm.replace_twin(
        "sdk-dev-1",
        Twin(tags={"floor": 2}, properties=TwinProperties(desired={"mode": "eco"})),
        patched.etag,
    )
    desired = replaced.properties.desired
    print("replaced", replaced.tags, sorted(desired), flush=True)
    check(replaced.tags == {"floor": 2}, "tags replaced")
    check("fw" not in desired and desired["mode"] == "eco", "desired replaced")
    check(desired["$version"] == 2, f"desired $version {desired['$version']}")
    check(desired["$metadata"]["mode"]["$lastUpdatedVersion"] == 2, "metadata version")

    # No etag: the SDK sends a quoted `*`, which is unconditional.
    ring = rm.update_twin("sdk-dev-2", Twin(tags={"ring": "canary"}))
    check(ring.tags == {"ring": "canary"}, "unconditional twin update")

    # A device that is not there.
    expect_error("missing device", 404, "DeviceNotFound", lambda: rm.get_device("sdk-none"))
    expect_error("missing twin", 404, "DeviceNotFound", lambda: rm.get_twin("sdk-none"))

    # Delete: a stale etag is refused, the current one or none works.
    expect_error(
        "stale delete",
        412,
        "PreconditionFailed",
        lambda: rm.delete_device("sdk-dev-1", got.etag),
    )
    rm.delete_device("sdk-dev-1", rm.get_device("sdk-dev-1").etag)
    rm.delete_device("sdk-dev-2")
    expect_error("deleted device", 404, "DeviceNotFound", lambda: rm.get_device("sdk-dev-1"))
    print("registry ok", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Surprise as s:
        print("surprise:", s, flush=True)
        sys.exit(1)
