"""README's "Run a hub for your lab", run: every command of its shell blocks, in order, on this
machine, with the server's and each person's paths moved under tmp_path, the hub on 127.0.0.2
with a certificate from the guide's own openssl commands, and the systemd units' ExecStart lines
as the services. A command that needs root on a real server or a running systemd (useradd, pip,
systemctl's bookkeeping, ufw, loginctl, chown to the hub's user) is named in NOT_RUN with the
reason; any other command of the guide that no step here runs fails the test, so the guide cannot
grow a command nobody ran. The units themselves are checked with `systemd-analyze verify`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from kachery_node.daemon_client import DaemonClient
from tests import processes
from tests.nodes import KACHERY, free_port

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
GUIDE = README[README.index("## Run a hub for your lab"):]
GUIDE = GUIDE[: GUIDE.index("\n## ", 5)]
HUB_HOST = "127.0.0.2"

# What the guide asks of a real server that this test cannot do here, and why.
NOT_RUN = {
    r"^sudo useradd ": "creates a system user on this machine",
    r"^sudo python3 -m venv /opt/kachery && ": "installs; the test runs this checkout's own venv",
    r"^sudo /opt/kachery/bin/pip install --upgrade": "installs from the network",
    r"^sudo ufw allow ": "changes this machine's firewall",
    r"^loginctl enable-linger": "needs a running systemd-logind",
    r"^sudo chown -R kachery-hub: ": "the kachery-hub user is not created here (see useradd)",
}


def guide_commands() -> list[str]:
    """The guide's shell commands, in order: one per logical line (``\\`` continuations joined),
    comment lines left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", GUIDE, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+", " ", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def unit_exec_start(unit: Path) -> str:
    text = unit.read_text().replace("\\\n", " ")
    return re.sub(r"\s+", " ", re.search(r"^ExecStart=(.*)$", text, flags=re.M).group(1)).strip()


def unit_environment(unit: Path) -> dict[str, str]:
    return dict(line.split("=", 2)[1:] for line in unit.read_text().splitlines()
                if line.startswith("Environment="))


class GuideRun:
    """The machines of the guide under one tmp directory: ``admin`` (where the CA is made),
    the server (its /var/lib and /etc), alice's laptop (she owns the channel), her second
    machine ``laptop``, and a cluster login node sharing alice's home."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.admin = tmp / "admin"
        self.var_lib = tmp / "server/var/lib"
        self.etc = tmp / "server/etc"
        self.local = tmp / "cluster/local"
        for d in (self.admin, self.var_lib, self.etc, self.local):
            d.mkdir(parents=True)
        self.homes = {name: tmp / "home" / name for name in ("alice", "laptop")}
        base = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
        base["PATH"] = f"{Path(KACHERY).parent}:{base['PATH']}"
        self.env = {}
        for name, home in self.homes.items():
            home.mkdir(parents=True)
            self.env[name] = {**base, "HOME": str(home), "USER": "alice",
                              "KACHERY_DAEMON_PORT": str(free_port())}  # hermetic: never 20431
        # The shared home: same HOME, same user key. No port: as the guide says, the cluster
        # node's daemon finds a free one by itself beside the others on that machine.
        self.env["cluster"] = {k: v for k, v in self.env["alice"].items() if k != "KACHERY_DAEMON_PORT"}
        self.port = free_port()
        self.hub_url = f"https://{HUB_HOST}:{self.port}"
        self.machine = "alice"  # whose commands the guide is showing
        self.hub: subprocess.Popen | None = None
        self.node_service: subprocess.Popen | None = None
        processes.register(self)

    # ------------------------------------------------------------------ paths and services
    def localize(self, command: str) -> str:
        """The command as it runs here: the server's paths under tmp, the hub's name its address."""
        command = command.replace("DNS:hub.lab.example", f"DNS:hub.lab.example,IP:{HUB_HOST}")
        command = command.replace("https://hub.lab.example:8443", self.hub_url)
        command = command.replace("/opt/kachery/bin/kachery", KACHERY)
        command = command.replace("kachery-node/deploy/", f"{ROOT}/deploy/")
        command = command.replace("/var/lib", str(self.var_lib))
        command = command.replace("/etc/", f"{self.etc}/")
        command = command.replace("/local/", f"{self.local}/")
        command = command.replace("-g kachery-hub ", "")  # no such group here (see NOT_RUN)
        return re.sub(r"(^|&& )sudo ", r"\1", command)

    def sh(self, command: str, machine: str = "admin", check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", self.localize(command)], cwd=self.admin,
                              env=self.env.get(machine), capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def start_hub(self) -> None:
        """What `systemctl start kachery-hub` does: the unit's ExecStart, as written."""
        unit = self.etc / "systemd/system/kachery-hub.service"
        args = shlex.split(self.localize(unit_exec_start(unit)))
        args[args.index("--host") + 1] = HUB_HOST  # 0.0.0.0 on a server; here another loopback
        args[args.index("--port") + 1] = str(self.port)
        (self.var_lib / "kachery-hub").mkdir(mode=0o700, exist_ok=True)  # StateDirectory=
        info = self.var_lib / "kachery-hub/hub.json"
        info.unlink(missing_ok=True)
        self.hub = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not info.exists():
            assert self.hub.poll() is None, self.hub.stderr.read()
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.05)
        assert json.loads(info.read_text())["url"] == self.hub_url

    def stop_hub(self) -> None:
        """What `systemctl stop kachery-hub` does (KillSignal=SIGTERM): a clean exit."""
        if self.hub is not None and self.hub.poll() is None:
            self.hub.send_signal(signal.SIGTERM)
            assert self.hub.wait(30) == 0
        self.hub = None

    def start_node_service(self) -> None:
        """What `systemctl --user enable --now kachery-node` does: the unit's ExecStart with its
        Environment= lines, %h being the home."""
        unit = Path(self.homes["alice"] / ".config/systemd/user/kachery-node.service")
        home = str(self.homes["alice"])
        env = {**self.env["alice"], **{k: v.replace("%h", home) for k, v in unit_environment(unit).items()}}
        args = shlex.split(unit_exec_start(unit).replace("%h/.local/kachery/bin/kachery", KACHERY))
        assert args[1:] == ["node", "start", "--foreground"]
        self.node_service = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
        self.wait_connected("alice")

    def daemon(self, machine: str) -> DaemonClient:
        env = self.env[machine]
        storage = env.get("KACHERY_STORAGE_DIR") or f"{env['HOME']}/kachery-storage"
        return DaemonClient(Path(storage))  # found through the storage's daemon.json

    def wait_connected(self, machine: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.daemon(machine).is_running():
                channels = self.daemon(machine).status()["channels"]
                if channels and all(ch["state"] == "connected" for ch in channels):
                    return
            assert time.monotonic() < deadline, f"{machine}'s daemon did not connect"
            time.sleep(0.1)

    def stop(self) -> None:
        stops = [subprocess.Popen([KACHERY, "node", "stop"], env=self.env[machine],  # side by side
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for machine in ("alice", "cluster", "laptop")]
        for proc in stops:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.node_service is not None and self.node_service.poll() is None:
            self.node_service.kill()
            self.node_service.wait(10)
        if self.hub is not None and self.hub.poll() is None:
            self.hub.kill()
            self.hub.wait(10)


@pytest.mark.slow
def test_every_command_of_the_guide_runs(tmp_path):
    run = GuideRun(tmp_path)
    ran: list[str] = []
    try:
        for command in guide_commands():
            if any(re.search(p, command) for p in NOT_RUN):
                continue
            _step(run, command)
            ran.append(command)
        # What the guide set up, checked: the channel, its nodes, the key on the second machine.
        listed = json.loads(run.sh("kachery channel list --json", "alice").stdout)
        assert [c["channel"] for c in listed] == ["lab.data"]
        members = json.loads(run.sh("kachery channel show lab.data --json", "alice").stdout)["members"]
        assert {m["label"] for m in members} == {"alice-laptop", "cluster-login1"}
        owner = json.loads(run.sh("kachery info --json", "alice").stdout)["owner"]
        assert json.loads(run.sh("kachery info --json", "laptop").stdout)["owner"] == owner
    finally:
        run.stop()
    assert len(ran) >= 25


def _step(run: GuideRun, command: str) -> None:
    """Run one command of the guide as the machine it is meant for (``run.machine``: alice's,
    until the cluster section sets it; the node backup is alice's again)."""
    if command.startswith(("openssl ", "sudo install ")):
        run.sh(command)
    elif command.startswith("sudo cp kachery-node/deploy/systemd/kachery-hub.service"):
        (run.etc / "systemd/system").mkdir(parents=True)
        run.sh(command)
    elif command == "sudo systemctl daemon-reload && sudo systemctl enable --now kachery-hub":
        run.start_hub()
    elif command.startswith("curl "):
        assert json.loads(run.sh(command).stdout)["url"] == run.hub_url
    elif command.startswith("export KACHERY_HUB_URL="):
        shutil.copy(run.admin / "lab-ca.pem", run.homes["alice"])  # handed to every node
        for machine in ("alice", "cluster"):  # the cluster section says: as above
            _export(run, command, machine)
    elif command.startswith("export KACHERY_STORAGE_DIR=/local/"):
        run.machine = "cluster"
        _export(run, command, "cluster")
    elif command == "kachery node stop":
        run.machine = "alice"
        run.sh(command, "alice")
        if run.node_service is not None:
            assert run.node_service.wait(30) == 0  # the service's process ended cleanly
    elif command.startswith(("kachery init ", "kachery channel create ", "kachery node join ",
                             "kachery channel grant ")):
        run.sh(command, run.machine)
    elif command == "kachery node start":
        run.sh(command, run.machine)
        run.wait_connected(run.machine)
    elif command.startswith("mkdir -p ~/.config/systemd/user"):
        run.sh(command, "alice")
    elif command == "systemctl --user daemon-reload && systemctl --user enable --now kachery-node":
        run.sh("kachery node stop", "alice")  # the one started by hand above
        run.start_node_service()
    elif command.startswith("ssh laptop "):
        run.sh(shlex.split(command)[2], "laptop")
    elif command.startswith("scp -p ~/.kachery-user/user.key laptop:"):
        source, target = shlex.split(command)[2:]
        shutil.copy2(Path(source.replace("~", str(run.homes["alice"]))),
                     run.homes["laptop"] / target.split(":", 1)[1])
        key = run.homes["laptop"] / ".kachery-user/user.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    elif command == "sudo systemctl stop kachery-hub":
        run.stop_hub()
    elif command in ("sudo systemctl start kachery-hub", "sudo systemctl restart kachery-hub"):
        run.stop_hub()
        run.start_hub()
        run.wait_connected("cluster")  # nodes reconnect by themselves
    elif command.startswith("sudo tar -C /var/lib -czf "):
        run.sh(command)
        assert (run.admin / "kachery-hub-backup.tar.gz").stat().st_size > 0
    elif command.startswith("sudo tar -C /var/lib -xzf "):
        hub_id = json.loads((run.var_lib / "kachery-hub/hub.json").read_text())["hub_id"]
        run.stop_hub()
        shutil.rmtree(run.var_lib / "kachery-hub")  # the disaster the backup is for
        run.sh(command)
        run.start_hub()
        assert json.loads((run.var_lib / "kachery-hub/hub.json").read_text())["hub_id"] == hub_id
        run.wait_connected("cluster")
    elif command.startswith("tar -C ~ -czf kachery-node-backup.tar.gz"):
        run.sh(command, "alice")
        listed = run.sh("tar -tzf kachery-node-backup.tar.gz", "alice").stdout.split()
        assert ".kachery-user/user.key" in listed and "kachery-storage/feeds.db" in listed
    elif command.startswith("/opt/kachery/bin/kachery --version"):
        assert "version" in run.sh(command).stdout
    else:
        pytest.fail(f"README's guide has a command no step of this test runs: {command!r}")


def _export(run: GuideRun, command: str, machine: str) -> None:
    out = run.sh(f"{command} && env -0", machine).stdout
    run.env[machine] = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit, user", [("kachery-hub.service", False), ("kachery-node.service", True)])
def test_the_systemd_units_verify(tmp_path, unit, user):
    """`systemd-analyze verify` with the units' programs pointed at this venv's kachery (it
    checks that they exist); no warning either (an unknown key is only a warning)."""
    text = (ROOT / "deploy/systemd" / unit).read_text()
    text = text.replace("/opt/kachery/bin/kachery", KACHERY).replace("%h/.local/kachery/bin/kachery", KACHERY)
    (tmp_path / unit).write_text(text)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    args = ["systemd-analyze", *(["--user"] if user else []), "verify", str(tmp_path / unit)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_guide_names_only_files_that_exist():
    for path in set(re.findall(r"`?(deploy/[\w./-]+)", GUIDE)):
        assert (ROOT / path.rstrip(".")).is_file(), path


def test_the_proxy_configurations_pass_to_the_hub_the_guide_runs_behind_them():
    """Caddy's and nginx's configurations name the port of the hub command the guide gives for
    running behind a proxy; nginx's passes WebSocket upgrades (the relay) and does not limit or
    buffer bucket uploads."""
    behind = re.search(r"`kachery hub serve --dir /var/lib/kachery-hub --host 127.0.0.1 --port (\d+)",
                       GUIDE.replace("\n", " "))
    assert behind is not None
    upstream = f"127.0.0.1:{behind.group(1)}"
    caddy = (ROOT / "deploy/caddy/Caddyfile").read_text()
    assert f"reverse_proxy {upstream}" in caddy
    nginx = (ROOT / "deploy/nginx/kachery-hub.conf").read_text()
    for needed in (f"proxy_pass http://{upstream};", "proxy_set_header Upgrade $http_upgrade;",
                   "client_max_body_size 0;", "proxy_request_buffering off;", "proxy_http_version 1.1;"):
        assert needed in nginx, needed


def test_a_copied_user_key_that_others_can_read_is_refused(tmp_path):
    """What the guide's chmod 600 is for: kachery refuses a user key that group or others can
    read (the same check on every load)."""
    env = {**os.environ, "KACHERY_USER_DIR": str(tmp_path / "user"),
           "KACHERY_STORAGE_DIR": str(tmp_path / "storage")}
    subprocess.run([KACHERY, "init"], env=env, check=True, capture_output=True, timeout=60)
    (tmp_path / "user/user.key").chmod(0o644)
    proc = subprocess.run([KACHERY, "init"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "user.key" in proc.stderr and "chmod" in proc.stderr, proc.stderr
