#!/usr/bin/env python3
"""A Python caller of msstore-facade, as a polyglot user would write one.

Usage:
    python client.py HOST:PORT < scenarios.json > results.jsonl

At start-up it generates Python stubs from the repository's ``proto/`` with grpcio-tools
(``python -m grpc_tools.protoc``, plus grpc_tools' bundled include dir for
``google/protobuf/timestamp.proto``) into a temporary directory and imports them: nothing
generated is ever committed, so the test always sees the protos as they are now.

Standard input is a JSON list of scenarios, each an object:

    {"name": "license_ok",                                  # echoed back
     "method": "msstore.v1.StoreEntitlements/GetOfflineLicense",
     "request": {"product_id": "9NBLGGH4R2R6", ...},        # proto JSON of the request
     "metadata": {"ms-cv": "xu2HW6SrSkyfHyFh.4"},          # optional, sent with the call
     "timeout": 10}                                         # optional deadline in seconds

For each scenario one JSON object is printed on its own line (see ``run_scenario``): the status
code name and message, the decoded response, the initial and trailing metadata, and the rich
error details decoded with ``grpc_status.rpc_status.from_call`` and
``google.rpc.error_details_pb2`` (ErrorInfo, RetryInfo, BadRequest).

Only the address given on the command line is contacted (HTTP proxies are disabled).
Anything unexpected (stub generation failing, an unknown method, a malformed scenario) ends the
script with a non-zero exit code and a traceback on standard error.
"""

import argparse
import importlib
import json
import pathlib
import subprocess
import sys
import tempfile

import grpc
import grpc_tools
from google.protobuf import json_format
from google.protobuf import message_factory
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

REPO_PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"


def generate_stubs(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> list:
    """Runs grpc_tools.protoc over the .proto files of proto_dir/msstore; returns their modules."""
    # Only our API: google.rpc comes from googleapis-common-protos (proto/third_party is for
    # the server's reflection only).
    protos = sorted(
        p.relative_to(proto_dir).as_posix() for p in (proto_dir / "msstore").rglob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{proto_dir}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            *protos,
        ],
        check=True,
        cwd=proto_dir,
    )
    return [p[: -len(".proto")].replace("/", ".") for p in protos]


def load_methods(modules: list) -> dict:
    """Maps "package.Service/Method" to (stub class, method name, request class)."""
    methods = {}
    for module_name in modules:
        messages = importlib.import_module(module_name + "_pb2")
        services = importlib.import_module(module_name + "_pb2_grpc")
        for service in messages.DESCRIPTOR.services_by_name.values():
            stub_class = getattr(services, service.name + "Stub")
            for method in service.methods:
                request_class = message_factory.GetMessageClass(method.input_type)
                methods[f"{service.full_name}/{method.name}"] = (stub_class, method.name, request_class)
    return methods


def text_metadata(pairs) -> dict:
    """Metadata as {key: value}; binary (-bin) values are shown by size only."""
    out = {}
    for key, value in pairs or ():
        out[key] = f"<{len(value)} bytes>" if isinstance(value, bytes) else value
    return out


def timestamps(message) -> dict:
    """Top-level google.protobuf.Timestamp fields that are set, as Unix seconds."""
    found = {}
    for field, value in message.ListFields():
        if isinstance(value, timestamp_pb2.Timestamp):
            found[field.name] = value.seconds
    return found


def decode_details(call) -> dict:
    """The google.rpc.Status details of a failed call, decoded by type."""
    status = rpc_status.from_call(call)  # None when the server sent no grpc-status-details-bin
    if status is None:
        return {"status_details": False}
    out = {"status_details": True, "detail_types": [d.type_url for d in status.details]}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out["error_info"] = {
                "reason": info.reason,
                "domain": info.domain,
                "metadata": dict(info.metadata),
            }
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay
            out["retry_delay_seconds"] = delay.seconds + delay.nanos / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out["bad_request_fields"] = [v.field for v in bad.field_violations]
            out["bad_request"] = [
                {"field": v.field, "description": v.description} for v in bad.field_violations
            ]
    return out


def run_scenario(channel, methods: dict, scenario: dict, earlier: dict) -> dict:
    """Makes one call; returns what a caller can observe of it. `ack_ids_from` names an
    earlier scenario (a PullRefundEvents) whose events' ack ids the request acknowledges, as a
    reconciliation loop does."""
    stub_class, method_name, request_class = methods[scenario["method"]]
    fields = dict(scenario.get("request", {}))
    if "ack_ids_from" in scenario:
        pulled = earlier[scenario["ack_ids_from"]].get("response", {}).get("events", [])
        fields["ack_ids"] = [event["ack_id"] for event in pulled]
    request = json_format.ParseDict(fields, request_class())
    call = getattr(stub_class(channel), method_name)
    result = {"name": scenario["name"], "method": scenario["method"]}
    try:
        response, rpc = call.with_call(
            request,
            timeout=scenario.get("timeout", 10),
            metadata=list(scenario.get("metadata", {}).items()),
        )
    except grpc.RpcError as error:  # also a grpc.Call: code, details, metadata
        result["code"] = error.code().name
        result["message"] = error.details()
        result["initial_metadata"] = text_metadata(error.initial_metadata())
        result["trailing_metadata"] = text_metadata(error.trailing_metadata())
        result.update(decode_details(error))
        return result
    result["code"] = rpc.code().name
    result["message"] = rpc.details()
    result["initial_metadata"] = text_metadata(rpc.initial_metadata())
    result["trailing_metadata"] = text_metadata(rpc.trailing_metadata())
    result["response"] = json_format.MessageToDict(response, preserving_proto_field_name=True)
    result["timestamps"] = timestamps(response)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="the facade's gRPC address, HOST:PORT")
    parser.add_argument("--proto-dir", type=pathlib.Path, default=REPO_PROTO_DIR)
    args = parser.parse_args()
    scenarios = json.load(sys.stdin)

    with tempfile.TemporaryDirectory(prefix="msstore-py-stubs-") as out_dir:
        modules = generate_stubs(args.proto_dir.resolve(), pathlib.Path(out_dir))
        sys.path.insert(0, out_dir)
        methods = load_methods(modules)
        options = [("grpc.enable_http_proxy", 0)]
        with grpc.insecure_channel(args.address, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            earlier = {}
            for scenario in scenarios:
                result = run_scenario(channel, methods, scenario, earlier)
                earlier[scenario["name"]] = result
                print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
