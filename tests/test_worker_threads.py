"""Inference and uploads run in their own threads, with the request's context (who is calling)."""

import asyncio
import threading

from monailabel.endpoints.user.auth import User

from segloop.server import auth
from segloop.server.surface import _in_inference_thread, _in_upload_thread


def where_and_who():
    return threading.current_thread().name, auth.authenticated_name()


def test_workers_run_off_the_event_loop_with_the_callers_identity(monkeypatch):
    monkeypatch.setattr(auth.settings, "MONAI_LABEL_AUTH_ENABLE", True)

    async def request(run):
        auth._caller.set(User(username="dr-who", roles=["annotator"]))
        loop_thread = threading.current_thread().name
        return loop_thread, await run(where_and_who)

    for run, prefix in ((_in_upload_thread, "segloop-uploads"), (_in_inference_thread, "segloop-infer")):
        loop_thread, (worker, who) = asyncio.run(request(run))
        assert worker.startswith(prefix) and worker != loop_thread
        assert who == "dr-who"


def test_uploads_are_stored_one_at_a_time_in_arrival_order():
    order, inside = [], []

    def store(n):
        inside.append(n)
        assert len(inside) == 1  # never two at once
        order.append(n)
        inside.pop()

    async def many():
        await asyncio.gather(*(_in_upload_thread(store, n) for n in range(20)))

    asyncio.run(many())
    assert order == list(range(20))
