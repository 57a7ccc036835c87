"""`embedstream serve` as a new user meets it: a ready line, probes that work, Redis supervised and
stopped last, configuration errors that stop instead of looping, and CLI pages that explain themselves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import redis

from embedstream.redis_server import free_port
from embedstream.v1 import embedder_pb2 as pb
from tests.support import ROOT
from tests.support.processes import base_env, stub, wait_until

READY = re.compile(
    r"embedstream ready: gRPC on (\S+)(?:; HTTP on \S+)?; models (.*?)"
    r"(; FAILED to load: (.*?) \(reason above\))?; metrics (.*)"
)


@contextmanager
def serving(tmp_path: Path, registry: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    (tmp_path / "models.toml").write_text(registry)
    port = free_port()
    env = base_env("", tmp_path / "models.toml")
    del env["EMBEDSTREAM_REDIS_URL"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        args = [sys.executable, "-m", "embedstream", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")]
        # Its own group, as a terminal's foreground job: Ctrl-C is SIGINT to the whole group.
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc, log_path, port
        finally:
            if proc.poll() is None:
                # A test that failed midway: serve stops its children (Redis last) on SIGTERM; killing
                # only the supervisor would leave them running (seen after a failed run).
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def ready_line(proc: subprocess.Popen[bytes], log_path: Path) -> re.Match[str]:
    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()
        return READY.search(log_path.read_text()) is not None

    wait_until(ready, 90, interval=0.2, what="the ready line")
    match = READY.search(log_path.read_text())
    assert match is not None
    return match


def embed_ok(port: int) -> bool:
    try:
        with stub(port) as s:
            return len(s.Embed(pb.EmbedRequest(inputs=[pb.Input(text="hi")]), timeout=5).embeddings) == 1
    except grpc.RpcError:
        return False


def redis_pid(log_path: Path) -> int:
    """The process id of serve's Redis (0 while it does not answer), from the port serve logged."""
    (port,) = set(re.findall(r"started redis-server on port (\d+)", log_path.read_text()))
    try:
        with redis.Redis(port=int(port), socket_timeout=1) as r:
            return int(r.info("server")["process_id"])
    except redis.RedisError:
        return 0


def test_serve_announces_ready_gives_each_child_a_probe_port_and_restarts_redis(tmp_path: Path) -> None:
    with serving(tmp_path, '[models.debug]\nfamily = "debug"\ndimensions = 8\n') as (proc, log_path, port):
        match = ready_line(proc, log_path)
        assert match.group(1) == f"127.0.0.1:{port}" and match.group(2) == "debug" and match.group(3) is None
        ports = dict(part.rsplit(" :", 1) for part in match.group(5).split(", "))
        assert set(ports) == {"gateway", "worker:debug"} and len(set(ports.values())) == 2
        env = base_env("", Path("/nonexistent"), EMBEDSTREAM_METRICS_PORT=ports["worker:debug"])
        probe = [sys.executable, "-m", "embedstream", "check", "--worker", "--ready"]
        assert subprocess.run(probe, env=env, cwd=ROOT, capture_output=True).returncode == 0
        assert embed_ok(port)
        # Redis dies while serving: the supervisor starts it again from its AOF and service resumes.
        pid = redis_pid(log_path)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: redis_pid(log_path) not in (0, pid), 30, interval=0.2, what="redis to be restarted")
        wait_until(lambda: embed_ok(port), 60, interval=0.3, what="Embed to work again")
        # Ctrl-C reaches the supervisor's group only; Redis (its own session) outlives the others.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
    text = log_path.read_text()
    assert "restarting it from its AOF" in text
    assert "could not hand back" not in text and "Traceback" not in text
    assert redis_pid(log_path) == 0  # stopped with the rest


def test_a_worker_with_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    registry = (
        '[models.debug]\nfamily = "debug"\ndimensions = 8\n'
        f'[models.broken]\nfamily = "text-dense"\npath = "{tmp_path}/no-such-folder"\n'
    )
    with serving(tmp_path, registry) as (proc, log_path, port):
        match = ready_line(proc, log_path)
        assert match.group(2) == "debug" and match.group(4) == "broken"
        assert embed_ok(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log_path.read_text()
    assert text.count("does not exist on this machine") == 1, text
    assert "worker:broken exited with a configuration error" in text and "restarting in" not in text


def test_api_key_new_creates_the_key_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "etc/embedstream/api-keys"
    env = base_env("", Path("/nonexistent"))
    args = [sys.executable, "-m", "embedstream", "api-key", "new", "--tenant", "acme", "--file", str(path)]
    result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert result.stdout.strip() and "acme" in path.read_text()
    (tmp_path / "ro").mkdir(mode=0o500)
    args[-1] = str(tmp_path / "ro/sub/keys")
    if os.geteuid() != 0:  # root writes anywhere
        result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr


def test_every_subcommand_help_explains_itself_and_shows_defaults() -> None:
    from embedstream.arguments import parser as _parser

    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0]))]  # type: ignore[union-attr]
    for name, command in sub.choices.items():
        text = " ".join(command.format_help().split())
        assert command.description, f"{name} --help has no description"
        assert command.description in text
    check = " ".join(sub.choices["check"].format_help().split())
    assert "--redis-url" not in check and "--registry" not in check
    assert "(default: 30.0)" in check
    assert "(default: 64)" in " ".join(sub.choices["embed-file"].format_help().split())
    assert "EMBEDSTREAM_API_KEY" in parser.format_help()
