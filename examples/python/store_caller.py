#!/usr/bin/env python3
"""Calls every RPC of msstore-facade from Python and shows its rich error details.

Start the facade against its built-in emulator, then run this script with a user's two Store ID
keys (the sandbox mints them):

    cargo run --release -- --sandbox                              # terminal 1
    pip install -r examples/python/requirements.txt               # terminal 2, in a virtualenv
    python examples/python/store_caller.py \\
        --collections-key "$(cargo run -q --release -- sandbox-key --user alice)" \\
        --purchase-key "$(cargo run -q --release -- sandbox-key --type purchase --user alice)"

What it shows:

* Stubs generated from the repository's ``proto/`` at start-up (``grpc_tools.protoc`` into a
  temporary directory): nothing generated is committed, so the script always matches the protos.
* One call of every RPC of the five services with valid sandbox data, and what came back.
* Failures provoked on purpose (invalid input, and the sandbox's magic ids ``MAGIC-429`` and
  ``MAGIC-503``), with the ``grpc-status-details-bin`` trailer decoded into ``google.rpc.Status``
  and its ``ErrorInfo`` (reason, domain, metadata), ``RetryInfo`` (retry_delay) and
  ``BadRequest`` (field violations).
* The retry rule callers of the facade should follow: retry only when the status carries
  ``RetryInfo``, after the delay it names, a bounded number of times. The facade has already
  retried what it could; a status without ``RetryInfo`` will not get better by asking again.

Each call has an expected outcome. The script exits 1 if any call ends otherwise, so it doubles
as a smoke test (``tests/polyglot_examples.rs`` runs it against ``--sandbox`` in CI).
"""

import argparse
import dataclasses
import importlib
import json
import os
import pathlib
import sys
import tempfile
import time
import uuid

import grpc
import grpc_tools
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

REPO_PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"

# The retry rule: at most this many attempts per call, and never a wait longer than this. A
# RetryInfo delay above it (a throttled Store asks for 30 s) is reported to the user instead.
MAX_ATTEMPTS = 3
MAX_RETRY_WAIT_SECONDS = 5.0
# Every call's deadline; the facade gives up upstream when it passes.
CALL_TIMEOUT_SECONDS = 15.0

# Sandbox data (README, "The sandbox catalog" and "Magic ids").
LICENSE = {"product_id": "9NBLGGH4R2R6", "sku_id": "0016", "content_id": "c-1"}
CONSUMABLE = "9NSANDBOXCNS"
DEVELOPER_MANAGED_CONSUMABLE = "9NSANDBOXUCN"
TRIAL_APP = "9NSANDBOXAPP"
PASS = "9NSANDBOXPAS"
REVOKED_ON_GRANT = "9NSANDBOXRVK"  # a free product the sandbox refunds at once


def generate_stubs(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> list:
    """Compiles every .proto under ``proto_dir/msstore`` into ``out_dir`` with grpcio-tools and
    returns the module names (``msstore.v1.store_keys``). ``google/rpc`` comes from
    googleapis-common-protos, the well-known types from grpc_tools' bundled includes."""
    protos = sorted(
        p.relative_to(proto_dir).as_posix() for p in (proto_dir / "msstore").rglob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir / 'msstore'}")
    from grpc_tools import protoc  # imported here: it is only needed at start-up

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(proto_dir / p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed (see above)")
    return [p[: -len(".proto")].replace("/", ".") for p in protos]


@dataclasses.dataclass
class RichError:
    """What ``grpc-status-details-bin`` says about a failed call, decoded."""

    error_info: "error_details_pb2.ErrorInfo | None" = None
    retry_delay: "float | None" = None  # seconds, from RetryInfo
    bad_request: "error_details_pb2.BadRequest | None" = None
    type_urls: tuple = ()

    @classmethod
    def from_call(cls, call: grpc.Call) -> "RichError":
        # rpc_status reads the trailer and parses it as google.rpc.Status (None when absent).
        status = rpc_status.from_call(call)
        found = cls(type_urls=tuple(d.type_url for d in status.details) if status else ())
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                found.error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(found.error_info)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                found.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                found.bad_request = error_details_pb2.BadRequest()
                detail.Unpack(found.bad_request)
        return found

    def kinds(self) -> set:
        """The detail kinds present: {"ErrorInfo", "RetryInfo", "BadRequest"} or fewer."""
        present = {
            "ErrorInfo": self.error_info is not None,
            "RetryInfo": self.retry_delay is not None,
            "BadRequest": self.bad_request is not None,
        }
        return {kind for kind, here in present.items() if here}

    def describe(self) -> list:
        """One line per detail, as the script prints them."""
        lines = []
        if self.error_info is not None:
            metadata = " ".join(f"{k}={v}" for k, v in sorted(self.error_info.metadata.items()))
            lines.append(
                f"ErrorInfo: reason={self.error_info.reason} domain={self.error_info.domain}"
                + (f" metadata: {metadata}" if metadata else "")
            )
        if self.retry_delay is not None:
            lines.append(f"RetryInfo: retry_delay={self.retry_delay:g}s")
        if self.bad_request is not None:
            for violation in self.bad_request.field_violations:
                lines.append(f"BadRequest: {violation.field}: {violation.description}")
        return lines


@dataclasses.dataclass
class Expect:
    """The outcome a call should have: its code name, the detail kinds it must carry, and how
    many attempts the retry rule should make."""

    code: str = "OK"
    details: tuple = ()
    attempts: int = 1


class Caller:
    """Makes calls with the retry rule, prints each outcome and counts the unexpected ones."""

    def __init__(self, channel: grpc.Channel, modules: list):
        self.channel = channel
        self.stubs = {}
        for name in modules:
            messages = importlib.import_module(name + "_pb2")
            services = importlib.import_module(name + "_pb2_grpc")
            for service in messages.DESCRIPTOR.services_by_name.values():
                self.stubs[service.name] = getattr(services, service.name + "Stub")(channel)
        self.calls = 0
        self.unexpected = []

    def call(self, service: str, method: str, request, why: str, expect: Expect = Expect(),
             show: tuple = ()):
        """Calls ``service/method``; prints the ``show`` fields of the response and returns it,
        or None when the call failed."""
        full_name = f"msstore.v1.{service}/{method}"
        print(f"\n{full_name}  ({why})")
        rpc = getattr(self.stubs[service], method)
        response, error, attempts = self.with_retries(rpc, request)
        self.calls += 1
        code = "OK" if error is None else error.code().name
        plural = "s" if attempts > 1 else ""
        if error is None:
            print(f"  -> OK ({attempts} attempt{plural})")
            print_fields(response, show)
            details = RichError()
        else:
            print(f"  -> {code} ({attempts} attempt{plural}): {error.details()}")
            details = RichError.from_call(error)
            for line in details.describe():
                print(f"  {line}")
        missing = set(expect.details) - details.kinds()
        if code != expect.code or missing or attempts != expect.attempts:
            wanted = f"{expect.code} with {sorted(expect.details)} in {expect.attempts} attempt(s)"
            print(f"  UNEXPECTED: wanted {wanted}")
            self.unexpected.append(full_name)
        return response

    def with_retries(self, rpc, request):
        """The retry rule. Returns (response, error, attempts)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return rpc(request, timeout=CALL_TIMEOUT_SECONDS), None, attempt
            except grpc.RpcError as error:
                delay = RichError.from_call(error).retry_delay
                if delay is None:
                    return None, error, attempt  # no RetryInfo: asking again will not help
                if attempt == MAX_ATTEMPTS:
                    return None, error, attempt
                if delay > MAX_RETRY_WAIT_SECONDS:
                    print(f"  RetryInfo asks for {delay:g}s, more than this caller waits: not retried")
                    return None, error, attempt
                print(f"  {error.code().name}, RetryInfo says retry in {delay:g}s: waiting")
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns")


def print_fields(message, fields) -> None:
    """Prints some fields of a response as proto JSON (snake_case names)."""
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for field in fields:
        if field in as_dict:
            print(f"  {field}: {json.dumps(as_dict[field])[:120]}")


def call_every_rpc(caller: Caller, pb: dict, collections_key: str, purchase_key: str) -> None:
    """One successful call of every RPC, in the order a service would use them."""
    caller.call(
        "StoreEntitlements", "GetOfflineLicense",
        pb["entitlements"].GetOfflineLicenseRequest(**LICENSE),
        "an offline license",
        show=("product_key", "license_instance_id", "requestor_id"),
    )

    caller.call(
        "StoreKeys", "RenewKey",
        pb["keys"].RenewKeyRequest(key=collections_key),
        "renew the collections key; the type is read from the key",
        show=("key_type", "expires_at", "refresh_after"),
    )
    caller.call(
        "StoreKeys", "GetKeyCreationTokens",
        pb["keys"].GetKeyCreationTokensRequest(),
        "the tokens a client app needs to create user keys",
        show=("expires_at",),
    )

    owned = caller.call(
        "StoreCollections", "QueryCollections",
        pb["collections"].QueryCollectionsRequest(
            user_key=collections_key,
            products=[pb["collections"].ProductSku(product_id=p)
                      for p in (CONSUMABLE, TRIAL_APP, DEVELOPER_MANAGED_CONSUMABLE)],
            all_pages=True,
        ),
        "what the user owns of three products, every page",
    )
    for item in owned.items if owned else ():
        print(f"  {item.product_id}: {pb['collections'].ProductKind.Name(item.product_kind)}"
              f" quantity={item.quantity}")
    # A developer-managed consumable: the app keeps the balance, so no remove_quantity. The
    # tracking id makes the consume idempotent: after an unknown outcome, replay the same one.
    caller.call(
        "StoreCollections", "ConsumeProduct",
        pb["collections"].ConsumeProductRequest(
            user_key=collections_key,
            product_id=DEVELOPER_MANAGED_CONSUMABLE,
            tracking_id=str(uuid.uuid4()),
        ),
        "consume a developer-managed consumable",
        show=("product_id", "tracking_id"),
    )

    caller.call(
        "StorePurchases", "GrantFreeProduct",
        pb["purchases"].GrantFreeProductRequest(
            user_key=purchase_key, product_id=REVOKED_ON_GRANT, sku_id="0010",
            availability_id="9PSANDBOXAVL", language="en-us", market="us",
            order_id=str(uuid.uuid4()),  # the idempotency key of the grant
        ),
        "grant a free product (the sandbox refunds this one at once)",
        show=("order_id", "order_state"),
    )
    recurrences = caller.call(
        "StorePurchases", "QueryRecurrences",
        pb["purchases"].QueryRecurrencesRequest(user_key=purchase_key, all_pages=True),
        "the user's subscriptions, every page",
    )
    for item in recurrences.items if recurrences else ():
        state = pb["purchases"].RecurrenceState.Name(item.recurrence_state)
        print(f"  {item.product_id}: {state}")
    active = [r for r in (recurrences.items if recurrences else ()) if r.product_id == PASS]
    caller.call(
        "StorePurchases", "ChangeRecurrence",
        pb["purchases"].ChangeRecurrenceRequest(
            user_key=purchase_key,
            recurrence_id=active[0].id if active else "",
            change_type=pb["purchases"].CHANGE_TYPE_EXTEND,
            extension_days=1,
        ),
        "extend the pass subscription by a day",
        show=("id", "expiration_time"),
    )
    revoked = caller.call(
        "StorePurchases", "QueryOrders",
        pb["purchases"].QueryOrdersRequest(
            user_key=purchase_key,
            line_item_states=[pb["purchases"].LINE_ITEM_STATE_REVOKED],
            all_pages=True,
        ),
        "orders whose value was taken back",
    )
    if revoked:
        print(f"  {len(revoked.items)} order(s) with a revoked line item")

    # The refund reconciliation loop: pull, handle, acknowledge what was handled.
    pulled = caller.call(
        "StoreRefunds", "PullRefundEvents",
        pb["refunds"].PullRefundEventsRequest(max_events=32),
        "refund events waiting in the queue",
    )
    events = list(pulled.events) if pulled else []
    for event in events:
        state = pb["refunds"].RefundEventState.Name(event.state)
        print(f"  {state} order {event.order_id} product {event.product_id}")
    acked = caller.call(
        "StoreRefunds", "AcknowledgeRefundEvents",
        pb["refunds"].AcknowledgeRefundEventsRequest(ack_ids=[e.ack_id for e in events]),
        "acknowledge the handled events",
    )
    if acked:
        print(f"  acknowledged {len(acked.acknowledged)}, expired {len(acked.expired)}")


def provoke_failures(caller: Caller, pb: dict, purchase_key: str) -> None:
    """Failures on purpose: each shows a kind of rich detail and what the retry rule does."""
    invalid = dict(LICENSE, sku_id="", content_id="..")
    caller.call(
        "StoreEntitlements", "GetOfflineLicense",
        pb["entitlements"].GetOfflineLicenseRequest(**invalid),
        "invalid ids: refused before any Store call, never retried",
        Expect("INVALID_ARGUMENT", ("ErrorInfo", "BadRequest")),
    )
    caller.call(
        "StoreCollections", "QueryCollections",
        pb["collections"].QueryCollectionsRequest(
            user_key=purchase_key, products=[pb["collections"].ProductSku(product_id=CONSUMABLE)]
        ),
        "a purchase key where a collections key is needed",
        Expect("INVALID_ARGUMENT", ("ErrorInfo", "BadRequest")),
    )
    caller.call(
        "StoreEntitlements", "GetOfflineLicense",
        pb["entitlements"].GetOfflineLicenseRequest(**dict(LICENSE, product_id="MAGIC-429")),
        "the Store throttles for 30 s: longer than this caller waits",
        Expect("RESOURCE_EXHAUSTED", ("ErrorInfo", "RetryInfo")),
    )
    caller.call(
        "StoreEntitlements", "GetOfflineLicense",
        pb["entitlements"].GetOfflineLicenseRequest(**dict(LICENSE, product_id="MAGIC-503")),
        f"the Store is unavailable every time: retried after RetryInfo's delay, {MAX_ATTEMPTS} attempts",
        Expect("UNAVAILABLE", ("ErrorInfo", "RetryInfo"), attempts=MAX_ATTEMPTS),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--address", default=os.environ.get("MSSTORE_FACADE_ADDR", "127.0.0.1:50051"),
        help="the facade's gRPC address, HOST:PORT (env MSSTORE_FACADE_ADDR; default %(default)s)",
    )
    parser.add_argument(
        "--collections-key", default=os.environ.get("MSSTORE_COLLECTIONS_KEY"),
        help="a user's collections Store ID key (env MSSTORE_COLLECTIONS_KEY)",
    )
    parser.add_argument(
        "--purchase-key", default=os.environ.get("MSSTORE_PURCHASE_KEY"),
        help="the same user's purchase Store ID key (env MSSTORE_PURCHASE_KEY)",
    )
    parser.add_argument("--proto-dir", type=pathlib.Path, default=REPO_PROTO_DIR)
    args = parser.parse_args()
    if not args.collections_key or not args.purchase_key:
        parser.error("both keys are needed: `msstore-facade sandbox-key [--type purchase]` mints them")

    with tempfile.TemporaryDirectory(prefix="msstore-stubs-") as out_dir:
        modules = generate_stubs(args.proto_dir.resolve(), pathlib.Path(out_dir))
        sys.path.insert(0, out_dir)
        pb = {
            name: importlib.import_module(f"msstore.v1.store_{name}_pb2")
            for name in ("entitlements", "keys", "collections", "purchases", "refunds")
        }
        # Only the facade is contacted: no HTTP proxy from the environment.
        options = [("grpc.enable_http_proxy", 0)]
        with grpc.insecure_channel(args.address, options=options) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=10)
            except grpc.FutureTimeoutError:
                raise SystemExit(f"no facade answers at {args.address} (start one with --sandbox)")
            caller = Caller(channel, modules)
            call_every_rpc(caller, pb, args.collections_key, args.purchase_key)
            provoke_failures(caller, pb, args.purchase_key)

    print()
    if caller.unexpected:
        print(f"{len(caller.unexpected)} of {caller.calls} calls did not answer as expected:")
        for name in caller.unexpected:
            print(f"  {name}")
        return 1
    print(f"all {caller.calls} calls answered as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
