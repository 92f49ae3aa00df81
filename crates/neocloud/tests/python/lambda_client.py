"""Drives neocloud's Lambda-Cloud-compatible API with a public Lambda client library.

The library is `lambda-cloud-api-client` from PyPI, generated from Lambda's published API
description, used unchanged: only its base URL points here. Its endpoint functions send the
requests; its models parse every answer (they refuse a missing field or an unknown status or
error code). Run by the integration test `lambda::a_lambda_client_library_works_against_serve_demo`
against `neocloud serve --demo`, with:

  LAMBDA_BASE_URL      http://HOST:PORT/lambda/api/v1
  LAMBDA_API_KEY       a key of the demo tenant frontier-lab
  LAMBDA_OPERATOR_KEY  the operator's key (refused here: it acts for no tenant)
  LAMBDA_PUBLIC_KEY    an OpenSSH public key line
"""

import json
import os
import sys

from lambda_cloud_api_client import AuthenticatedClient
from lambda_cloud_api_client.api.default import (
    add_ssh_key,
    delete_ssh_key,
    get_instance,
    instance_types,
    launch_instance,
    list_file_systems,
    list_instances,
    list_ssh_keys,
    terminate_instance,
)
from lambda_cloud_api_client.models.add_ssh_key_body import AddSSHKeyBody
from lambda_cloud_api_client.models.error_response_body import ErrorResponseBody
from lambda_cloud_api_client.models.instance import Instance
from lambda_cloud_api_client.models.instance_status import InstanceStatus
from lambda_cloud_api_client.models.instance_type import InstanceType
from lambda_cloud_api_client.models.launch_instance_body import LaunchInstanceBody
from lambda_cloud_api_client.models.region import Region
from lambda_cloud_api_client.models.ssh_key import SshKey
from lambda_cloud_api_client.models.terminate_instance_body import TerminateInstanceBody

BASE = os.environ["LAMBDA_BASE_URL"]
client = AuthenticatedClient(base_url=BASE, token=os.environ["LAMBDA_API_KEY"])


def data(resp, status=200):
    assert resp.status_code == status, (resp.status_code, resp.content)
    return json.loads(resp.content)["data"]


def error(resp, status, code):
    assert resp.status_code == status, (resp.status_code, resp.content)
    body = ErrorResponseBody.from_dict(json.loads(resp.content))
    assert str(body.error.code) == code, body
    assert body.error.message
    return body.error


# The operator's key acts for no tenant: refused in Lambda's shape.
operator = AuthenticatedClient(base_url=BASE, token=os.environ["LAMBDA_OPERATOR_KEY"])
error(list_instances.sync_detailed(client=operator), 403, "global/invalid-api-key")
error(
    list_instances.sync_detailed(client=AuthenticatedClient(base_url=BASE, token="nope")),
    401,
    "global/invalid-api-key",
)

# An SSH key of one's own.
key = SshKey.from_dict(
    data(
        add_ssh_key.sync_detailed(
            client=client,
            body=AddSSHKeyBody(name="laptop", public_key=os.environ["LAMBDA_PUBLIC_KEY"]),
        )
    )
)
assert key.name == "laptop"
keys = [SshKey.from_dict(k) for k in data(list_ssh_keys.sync_detailed(client=client))]
assert [k.name for k in keys] == ["laptop"], keys

# The catalogue: the demo's H100 and GB200 types, priced, with their regions (sites).
types = data(instance_types.sync_detailed(client=client))
for name, entry in types.items():
    t = InstanceType.from_dict(entry["instance_type"])
    assert t.name == name
    assert t.price_cents_per_hour > 0, t
    assert t.specs.vcpus > 0 and t.specs.memory_gib > 0, t
    for r in entry["regions_with_capacity_available"]:
        Region.from_dict(r)
h100 = types["gpu_1x_h100_sxm5"]
regions = [Region.from_dict(r) for r in h100["regions_with_capacity_available"]]
assert [r.name for r in regions] == ["memphis-1"], regions
assert regions[0].description == "us-south"
assert "gpu_8x_h100_sxm5" in types and "gpu_4x_gb200" in types, sorted(types)
print("instance types:", ", ".join(sorted(types)))

# Launch, list, read.
launched = data(
    launch_instance.sync_detailed(
        client=client,
        body=LaunchInstanceBody(
            region_name="memphis-1",
            instance_type_name="gpu_1x_h100_sxm5",
            ssh_key_names=["laptop"],
            name="from-a-lambda-client",
        ),
    )
)
ids = launched["instance_ids"]
assert len(ids) == 1, launched
gb200 = data(
    launch_instance.sync_detailed(
        client=client,
        body=LaunchInstanceBody(
            region_name="memphis-2",
            instance_type_name="gpu_4x_gb200",
            ssh_key_names=["laptop"],
            quantity=2,
        ),
    )
)["instance_ids"]
assert len(gb200) == 2, gb200
ids += gb200

listed = [Instance.from_dict(i) for i in data(list_instances.sync_detailed(client=client))]
assert sorted(i.id for i in listed) == sorted(ids), listed
for i in listed:
    assert i.status == InstanceStatus.BOOTING, i
    assert i.ssh_key_names == ["laptop"]
    assert i.file_system_names == []
one = Instance.from_dict(data(get_instance.sync_detailed(ids[0], client=client)))
assert one.name == "from-a-lambda-client"
assert one.region.name == "memphis-1" and one.instance_type.name == "gpu_1x_h100_sxm5", one
print("launched:", ", ".join(f"{i.id} ({i.instance_type.name} in {i.region.name})" for i in listed))

# Errors a client must be able to read.
error(
    launch_instance.sync_detailed(
        client=client,
        body=LaunchInstanceBody(
            region_name="memphis-1", instance_type_name="gpu_9x_nothing", ssh_key_names=["laptop"]
        ),
    ),
    400,
    "global/invalid-parameters",
)
error(get_instance.sync_detailed("no-such-instance", client=client), 404,
      "global/object-does-not-exist")

# Terminate: each is being stopped (the demo has no agents to confirm the stop).
ended = data(
    terminate_instance.sync_detailed(client=client, body=TerminateInstanceBody(instance_ids=ids))
)["terminated_instances"]
ended = [Instance.from_dict(i) for i in ended]
assert sorted(i.id for i in ended) == sorted(ids), ended
for i in ended:
    assert i.status in (InstanceStatus.TERMINATING, InstanceStatus.TERMINATED), i
again = Instance.from_dict(data(get_instance.sync_detailed(ids[0], client=client)))
assert again.status in (InstanceStatus.TERMINATING, InstanceStatus.TERMINATED), again

assert data(list_file_systems.sync_detailed(client=client)) == []
assert delete_ssh_key.sync_detailed(key.id, client=client).status_code == 200
assert data(list_ssh_keys.sync_detailed(client=client)) == []

print("lambda client: ok")
sys.exit(0)
