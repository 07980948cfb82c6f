"""A minicrm client in Python: an operator, a source, two contacts, a close.

Run it through run.sh, which generates the stubs (minicrm.v1.*_pb2*) from
proto/ first. Every check is an assert, so a server that does not behave as
the README says makes this exit non-zero.
"""

import argparse
import uuid

import grpc

from minicrm.v1 import contact_pb2, contact_pb2_grpc
from minicrm.v1 import operator_pb2, operator_pb2_grpc
from minicrm.v1 import source_pb2, source_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--addr", default="127.0.0.1:50051", help="the server's HOST:PORT")
    args = parser.parse_args()

    with grpc.insecure_channel(args.addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        operators = operator_pb2_grpc.OperatorServiceStub(channel)
        sources = source_pb2_grpc.SourceServiceStub(channel)
        contacts = contact_pb2_grpc.ContactServiceStub(channel)

        # An operator who takes at most 2 contacts at a time.
        ann = operators.CreateOperator(
            operator_pb2.CreateOperatorRequest(name="Ann", max_load=2)
        )
        print(f"operator {ann.id}: {ann.name}, max_load {ann.max_load}")

        # A source (a chat bot) that sends all its contacts to Ann. The bot id
        # is unique per run, so the example can run again on the same database.
        bot_id = f"python-example-{uuid.uuid4().hex[:8]}"
        bot = sources.CreateSource(source_pb2.CreateSourceRequest(bot_id=bot_id, name="Example bot"))
        sources.SetSourceOperators(
            source_pb2.SetSourceOperatorsRequest(
                source_id=bot.id,
                operators=[source_pb2.OperatorWeight(operator_id=ann.id, weight=1)],
            )
        )
        print(f"source {bot.id}: {bot.bot_id}")

        # Two contacts of one person: the second is found by phone, whatever
        # the formatting, and its email is filled in.
        phone = f"+1 555 {uuid.uuid4().int % 10**7:07d}"
        first = contacts.RegisterContact(
            contact_pb2.RegisterContactRequest(
                bot_id=bot_id,
                lead=contact_pb2.LeadIdentity(phone=phone, name="Carol"),
                request_id=f"{bot_id}-msg-1",
            )
        )
        second = contacts.RegisterContact(
            contact_pb2.RegisterContactRequest(
                source_id=bot.id,
                lead=contact_pb2.LeadIdentity(
                    phone=phone.replace(" ", ""), email=f"carol-{bot_id}@example.com"
                ),
                request_id=f"{bot_id}-msg-2",
            )
        )
        assert first.lead_created and not second.lead_created
        assert first.lead.id == second.lead.id
        assert second.lead.email == f"carol-{bot_id}@example.com"
        active = contact_pb2.CONTACT_STATUS_ACTIVE
        for registered in (first, second):
            assert registered.contact.status == active, registered
            assert registered.contact.operator_id == ann.id
            print(
                f"contact {registered.contact.id}: lead {registered.lead.id}, "
                f"{contact_pb2.ContactStatus.Name(registered.contact.status)}, "
                f"operator {registered.contact.operator_id}"
            )

        # A retry with the same request_id answers the first call's contact.
        retry = contacts.RegisterContact(
            contact_pb2.RegisterContactRequest(
                bot_id=bot_id,
                lead=contact_pb2.LeadIdentity(phone=phone),
                request_id=f"{bot_id}-msg-1",
            )
        )
        assert retry.contact.id == first.contact.id

        # Ann is full now: a third contact waits, PENDING.
        third = contacts.RegisterContact(
            contact_pb2.RegisterContactRequest(
                source_id=bot.id, lead=contact_pb2.LeadIdentity(external_id=f"{bot_id}-dave")
            )
        )
        assert third.contact.status == contact_pb2.CONTACT_STATUS_PENDING
        assert not third.contact.HasField("operator_id")
        print(f"contact {third.contact.id}: PENDING, Ann is full")

        # Closing the first contact frees a slot, and the pending one takes it
        # before the call returns.
        closed = contacts.CloseContact(contact_pb2.CloseContactRequest(id=first.contact.id))
        assert closed.status == contact_pb2.CONTACT_STATUS_CLOSED
        assert closed.HasField("closed_at")
        now = contacts.GetContact(contact_pb2.GetContactRequest(id=third.contact.id))
        assert now.status == active and now.operator_id == ann.id
        print(f"closed contact {closed.id}; contact {now.id} is ACTIVE with operator {now.operator_id}")

        # Errors are gRPC status codes with a message naming the field.
        try:
            contacts.CloseContact(contact_pb2.CloseContactRequest(id=first.contact.id))
            raise AssertionError("closing a closed contact must fail")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            print(f"closing it again: {error.code().name}: {error.details()}")

        ann_now = operators.GetOperator(operator_pb2.GetOperatorRequest(id=ann.id))
        assert ann_now.active_load == 2
        print(f"operator {ann.id}: active_load {ann_now.active_load} of {ann_now.max_load}")
        print("ok")


if __name__ == "__main__":
    main()
