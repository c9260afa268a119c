"""The mail of relays gone, listed from the cluster's mail bucket on a real NATS server
(relay/cluster/orphans.py): past the 100,000 subjects nats-server lists in one answer."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import KeyValueConfig

from e2echat.relay.cluster.orphans import MailBucket, Orphans
from e2echat.relay.cluster.records import mail_key
from e2echat.relay.cluster.wire import new_node_id

from nats_support import NatsServer
from support import WAIT

#: nats-server's bound on the subjects one STREAM.INFO answer lists (JSMaxSubjectDetails)
SERVER_PAGE = 100_000


@pytest.mark.timeout(120)
async def test_every_key_of_a_relay_gone_is_listed_past_one_page(nats_server: NatsServer) -> None:
    client = await nats.connect(nats_server.url, connect_timeout=WAIT, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=30)
        kv = await js.create_key_value(KeyValueConfig(bucket="t_mail", history=1))
        dead, alive, count = new_node_id(), new_node_id(), SERVER_PAGE + 10
        for start in range(0, count, 10_000):
            for seq in range(start, min(count, start + 10_000)):
                await client.publish(f"$KV.t_mail.{mail_key(f'n{seq % 50}', dead, seq)}", b"x")
            await client.flush()
        await js.publish(f"$KV.t_mail.{mail_key('dave', alive, 1)}", b"x")  # acknowledged: all are stored
        bucket = MailBucket(js, kv, "t_mail")
        keys = await bucket.keys("*.*.*")
        assert len(keys) == len(set(keys)) == count + 1
        orphans = Orphans(bucket, new_node_id())
        assert len(await orphans.gone_async(dead)) == 50
        assert len(await orphans.survey_async(lambda node: False)) == 51
    finally:
        await client.close()
