"""Clients no one here wrote, calling a running Sluice over the Open Inference Protocol (V2 REST).

Run by the Rust integration test `inference::v2_clients_*` (tests/it/v2.rs), which trains and
serves a model, scores the same images through `/v1`, and passes them here with the answers
`/v1` gave. Both `tritonclient.http` and the KServe SDK's REST client must get the same labels
and scores, for encoded images (BYTES) and prepared pixels (FP32), in JSON and binary form.

Usage: v2_clients.py URL TOKEN MODEL VERSION CASES_JSON
Exits 0 when every check passed; prints what failed otherwise.
"""

import asyncio
import base64
import json
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

URL, TOKEN, MODEL, VERSION, CASES = sys.argv[1:6]


def auth():
    # A fresh dict each call: tritonclient adds its own headers to the one it is given.
    return {"Authorization": f"Bearer {TOKEN}"}


cases = json.load(open(CASES))
n = len(cases)
expected = [c["label"] for c in cases]
scores = np.array([c["score"] for c in cases])
pngs = [base64.b64decode(c["png_b64"]) for c in cases]
shape = cases[0]["shape"]
pixels = np.array([c["pixels"] for c in cases], dtype=np.float32).reshape([n] + shape) / 255.0
checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    checks += 1


def decoded(array):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


def tritonclient_checks():
    client = triton.InferenceServerClient(url=URL.split("://", 1)[1])
    check(client.is_server_live(), "tritonclient: server live")
    check(client.is_server_ready(), "tritonclient: server ready")
    check(client.get_server_metadata()["name"] == "sluice", "tritonclient: server metadata")
    check(client.is_model_ready(MODEL, headers=auth()), "tritonclient: model ready")
    check(not client.is_model_ready("no-such-model", headers=auth()), "tritonclient: an unknown model is not ready")
    metadata = client.get_model_metadata(MODEL, headers=auth())
    inputs = {i["name"]: i for i in metadata["inputs"]}
    check(inputs["pixels"]["shape"][1:] == shape, f"tritonclient: pixel input shape {inputs['pixels']}")
    check(VERSION in metadata["versions"], f"tritonclient: versions {metadata['versions']}")

    # Encoded images, binary in and out.
    images = triton.InferInput("image", [n], "BYTES")
    images.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("labels", binary_data=False),
        triton.InferRequestedOutput("prediction_ids", binary_data=True),
    ]
    result = client.infer(MODEL, [images], outputs=outputs, headers=auth(), request_id="triton-1")
    probabilities = result.as_numpy("probabilities")
    check(probabilities.shape[0] == n, f"tritonclient: probabilities shape {probabilities.shape}")
    check(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4), "tritonclient: probabilities sum to 1")
    check(np.allclose(probabilities.max(axis=1), scores, atol=1e-4), f"tritonclient: scores {probabilities.max(axis=1)} vs /v1 {scores}")
    check(decoded(result.as_numpy("labels")) == expected, f"tritonclient: labels {decoded(result.as_numpy('labels'))} vs /v1 {expected}")
    check(len(set(decoded(result.as_numpy("prediction_ids")))) == n, "tritonclient: one prediction id per image")
    check(result.get_response()["id"] == "triton-1", "tritonclient: the request id comes back")

    # The classification extension: "score:index:label", best first.
    result = client.infer(MODEL, [images], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)], headers=auth())
    classes = result.as_numpy("probabilities")
    check(classes.shape == (n, 2), f"tritonclient: classification shape {classes.shape}")
    check([decoded(row)[0].split(":", 2)[2] for row in classes] == expected, "tritonclient: classification labels")

    # Prepared pixels, binary, by explicit version.
    prepared = triton.InferInput("pixels", list(pixels.shape), "FP32")
    prepared.set_data_from_numpy(pixels, binary_data=True)
    result = client.infer(MODEL, [prepared], model_version=VERSION, outputs=[triton.InferRequestedOutput("labels")], headers=auth())
    check(decoded(result.as_numpy("labels")) == expected, "tritonclient: FP32 pixels give /v1's labels")
    check(result.get_response()["model_version"] == VERSION, "tritonclient: the version asked for answers")

    # Errors in the protocol's shape.
    try:
        client.infer("no-such-model", [images], headers=auth())
        check(False, "tritonclient: an unknown model answered")
    except InferenceServerException as err:
        check(err.status() == "404" and "no-such-model" in err.message(), f"tritonclient: unknown model error {err}")
    try:
        client.infer(MODEL, [images])
        check(False, "tritonclient: no token answered")
    except InferenceServerException as err:
        check(err.status() == "401", f"tritonclient: no token error {err}")


async def kserve_checks():
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=60))
    check(await client.is_server_live(URL, headers=auth()), "kserve: server live")
    check(await client.is_model_ready(URL, MODEL, headers=auth()), "kserve: model ready")

    # Encoded images as base64 strings in JSON.
    images = InferInput(name="image", shape=[n], datatype="BYTES", data=[c["png_b64"] for c in cases])
    response = await client.infer(URL, InferRequest(model_name=MODEL, infer_inputs=[images], request_id="kserve-1"), model_name=MODEL, headers=auth())
    outputs = {o.name: o for o in response.outputs}
    check(decoded(outputs["labels"].as_numpy()) == expected, "kserve: labels from base64 images")
    check(np.allclose(outputs["probabilities"].as_numpy().max(axis=1), scores, atol=1e-4), "kserve: scores")
    check(response.id == "kserve-1", "kserve: the request id comes back")

    # Prepared pixels, binary.
    prepared = InferInput(name="pixels", shape=list(pixels.shape), datatype="FP32")
    prepared.set_data_from_numpy(pixels, binary_data=True)
    response = await client.infer(URL, InferRequest(model_name=MODEL, infer_inputs=[prepared]), model_name=MODEL, headers=auth())
    outputs = {o.name: o for o in response.outputs}
    check(decoded(outputs["labels"].as_numpy()) == expected, "kserve: FP32 pixels give /v1's labels")
    await client.close()


tritonclient_checks()
asyncio.run(kserve_checks())
print(f"ok: {checks} checks passed with tritonclient and the KServe SDK", flush=True)
