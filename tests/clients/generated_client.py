"""Generates a Python client from Sluice's /openapi.json with openapi-python-client (a generator
no one here wrote) and calls Sluice through it, unchanged.

Usage: generated_client.py BASE_URL TOKEN WORKDIR GENERATOR
"""
import importlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

base_url, token, workdir, generator = sys.argv[1:5]
work = Path(workdir)
work.mkdir(parents=True, exist_ok=True)
spec_path = work / "openapi.json"
with urllib.request.urlopen(f"{base_url}/openapi.json") as response:
    spec_path.write_bytes(response.read())
subprocess.run(
    [generator, "generate", "--path", str(spec_path), "--meta", "none", "--output-path", str(work / "sluice_client"), "--overwrite"],
    check=True,
    capture_output=True,
)
sys.path.insert(0, str(work))
client_module = importlib.import_module("sluice_client")
client = client_module.AuthenticatedClient(base_url=base_url, token=token)
anonymous = client_module.Client(base_url=base_url)

checks = {}
health = importlib.import_module("sluice_client.api.operations.operations_healthz").sync_detailed(client=anonymous)
checks["healthz"] = health.status_code.value if hasattr(health.status_code, "value") else int(health.status_code)
models = importlib.import_module("sluice_client.api.registry.registry_list_models").sync_detailed(client=client)
checks["list_models"] = int(models.status_code)
checks["models_body"] = json.loads(models.content)
missing = importlib.import_module("sluice_client.api.registry.registry_get_model").sync_detailed("no-such-model", client=client)
checks["get_unknown_model"] = int(missing.status_code)
checks["unknown_model_code"] = json.loads(missing.content)["error"]["code"]
refused = importlib.import_module("sluice_client.api.registry.registry_list_models").sync_detailed(client=anonymous)
checks["list_models_without_token"] = int(refused.status_code)
print(json.dumps(checks))
