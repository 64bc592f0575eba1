"""Microsoft's azure-iot-hub SDK invoking direct methods on a muster node.

Run by tests/tests/azure_sdk.rs with the connection string muster wrote (argv[1]), a connected
simulated device (argv[2]) and a registered device that is not connected (argv[3]);
REQUESTS_CA_BUNDLE names muster's CA. `IoTHubRegistryManager.invoke_device_method` on the first
must return the device's status and payload; on the second it must raise the SDK's HTTP error
with status 404. Prints one line per step and exits non-zero on the first surprise.
"""

import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod
from msrest.exceptions import HttpOperationError


def main() -> int:
    conn, online, offline = sys.argv[1], sys.argv[2], sys.argv[3]
    registry = IoTHubRegistryManager.from_connection_string(conn)
    method = CloudToDeviceMethod(
        method_name="reboot", payload={"delay": 5}, response_timeout_in_seconds=10
    )
    result = registry.invoke_device_method(online, method)
    print("invoked", online, result.status, result.payload, flush=True)
    if result.status != 200 or result.payload.get("method") != "reboot":
        print("unexpected result", result, flush=True)
        return 1
    # No payload: the SDK sends "" (its default), which the device gets as a JSON string.
    result = registry.invoke_device_method(online, CloudToDeviceMethod(method_name="ping"))
    print("invoked without payload", result.status, flush=True)
    if result.status != 200:
        return 1
    try:
        registry.invoke_device_method(
            offline, CloudToDeviceMethod(method_name="reboot", connect_timeout_in_seconds=1)
        )
    except HttpOperationError as e:
        status = e.response.status_code
        print("offline", status, e.response.text, flush=True)
        return 0 if status == 404 else 1
    print("offline device answered", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
