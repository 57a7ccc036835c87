"""A worker killed with SIGKILL in the middle of a video job loses nothing: another worker reclaims its
entries (clips), and every clip's segments come back once, equal to the same clip embedded on its own."""

from __future__ import annotations

import signal
import time

import numpy as np
import redis

from embedstream import keys
from embedstream.client import Client, MediaEmbedding, Sampling
from tests.support import media, tinymodels
from tests.support.faults import REGISTRY, Cluster, score
from tests.support.processes import wait_until

CLIPS = [(1.0, 1.5, 1.5), (2.0, 2.0), (0.5, 1.0, 2.5), (4.0,)]
COPIES = 8
SAMPLING = Sampling(frame_interval_s=0.1, scenes=True, output="both")


def bulk_pending(r: redis.Redis, pid: int, model: str) -> int:
    """Job entries the worker process ``pid`` holds unacknowledged."""
    for row in r.xinfo_consumers(keys.bulk(model), keys.GROUP):
        if f"-{pid}-" in row["name"].decode():
            return int(row["pending"])
    return 0


def test_worker_kill9_mid_video_job(cluster: Cluster) -> None:
    model = tinymodels.open_clip_model(cluster.root / "clip")
    (cluster.root / "models.toml").write_text(REGISTRY + f'\n[models.clip]\nfamily = "image-text"\npath = "{model}"\n')
    _, port = cluster.gateway()
    victim, survivor = cluster.worker("clip"), cluster.worker("clip")
    clips = [media.video(scenes) for scenes in CLIPS]
    with Client(f"127.0.0.1:{port}", model="clip", timeout=60) as client:
        alone = client.embed_media(clips, sampling=SAMPLING)
        handle = client.upload_media_job([clips[i % len(clips)] for i in range(len(clips) * COPIES)], sampling=SAMPLING)
        wait_until(
            lambda: handle.refresh().inputs_done >= 2 and bulk_pending(cluster.r, victim.pid, "clip") > 0,
            60,
            interval=0.01,
            what="the victim to hold clips of a job under way",
        )
        held = bulk_pending(cluster.r, victim.pid, "clip")
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: bulk_pending(cluster.r, victim.pid, "clip") == 0, 30, what="its clips to be reclaimed")
        recovery = time.monotonic() - killed
        job = handle.wait(timeout=180)
        results = list(handle.results())
    counts = {"lost": len(clips) * COPIES - len(results), "duplicated": 0, "mixed_up": 0, "non_finite": 0}
    counts["duplicated"] = max(0, job.inputs_done + job.inputs_failed - len(clips) * COPIES)
    for index, got in results:
        want = alone[index % len(clips)]
        assert isinstance(got, MediaEmbedding) and got.pooled is not None
        counts["non_finite"] += int(not np.isfinite(got.vectors).all())
        same = got.vectors.shape == want.vectors.shape and np.abs(got.vectors - want.vectors).max() <= 1e-5
        counts["mixed_up"] += int(not same or not np.allclose(got.start_s, want.start_s))
    assert held > 0 and survivor.alive() and job.inputs_failed == 0
    wait_until(lambda: cluster.pending(("clip",)) == 0, 20, what="the clip streams to drain")
    score("worker kill -9 mid video job", cluster, counts, recovery, held=held, clips=len(results))


def test_a_clip_that_decodes_longer_than_the_visibility_timeout_is_not_reclaimed(cluster: Cluster) -> None:
    model = tinymodels.open_clip_model(cluster.root / "clip")
    (cluster.root / "models.toml").write_text(REGISTRY + f'\n[models.clip]\nfamily = "image-text"\npath = "{model}"\n')
    _, port = cluster.gateway()
    workers = [cluster.worker("clip"), cluster.worker("clip")]
    # A minute and a half of 640x360 at 30 fps, every frame compared for scene cuts: seconds of
    # decoding, past the 1.5 s visibility timeout (a minute took 1.44 s on an idle machine); its
    # worker renews the entry's lease while it prepares it.
    clip = media.video([3.0] * 30, fps=30, size=(640, 360))
    with Client(f"127.0.0.1:{port}", model="clip", timeout=120) as client:
        started = time.monotonic()
        (got,) = client.embed_media([clip], sampling=Sampling(scenes=True, frame_interval_s=10.0))
        took = time.monotonic() - started
    assert len(got) == 30 and took > 1.5, took  # else the clip decoded too fast to prove anything
    assert not any("reclaimed" in w.log() for w in workers), [w.log()[-2000:] for w in workers]
