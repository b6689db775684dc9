"""Safety, checked on the source: nothing the project loads can run code (no pickle, torch.load
only with weights_only=True, np.load only with allow_pickle=False, YAML only through safe_load, no
eval/exec/dynamic imports), external commands run from argument lists (never a shell), and no
server binds all interfaces. Then, running: a local Ray started for a study listens on loopback only."""
from __future__ import annotations

import ast
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import ROOT, environment

SOURCES = sorted(p for folder in ("search", "spaces", "scripts") for p in (ROOT / folder).rglob("*.py"))

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
FORBIDDEN_CALLS = {
    "eval", "exec", "compile", "__import__", "importlib.import_module", "os.system", "os.popen",
    "subprocess.getoutput", "subprocess.getstatusoutput", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
    "yaml.load_all", "yaml.unsafe_load_all", "torch.jit.load", "pd.read_pickle", "pandas.read_pickle",
}
FORBIDDEN_FROM_IMPORTS = {("numpy", "load"), ("torch", "load"), ("yaml", "load"), ("yaml", "Loader"),
                          ("yaml", "UnsafeLoader"), ("yaml", "FullLoader"), ("os", "system"), ("os", "popen")}
REQUIRED_KEYWORDS = {"torch.load": ("weights_only", True), "np.load": ("allow_pickle", False),
                     "numpy.load": ("allow_pickle", False)}
COMMANDS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call", "subprocess.check_output"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", ""}
HOST_KEYWORDS = {"host", "dashboard_host", "bind", "bind_address", "listen"}


def dotted(expr: ast.AST) -> str:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return f"{dotted(expr.value)}.{expr.attr}"
    return ""


def is_text(expr: ast.AST) -> bool:
    """A string built in place: a literal, an f-string, or literals joined with +."""
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, str)
    if isinstance(expr, ast.JoinedStr):
        return True
    return isinstance(expr, ast.BinOp) and (is_text(expr.left) or is_text(expr.right))


def findings(source: str, name: str = "<source>") -> list[str]:
    """Every unsafe pattern in a module's source, as 'file:line: what'."""
    out = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in UNPICKLERS:
                out.append(f"{where}: imports from {node.module}")
            out += [f"{where}: from {node.module} import {a.name}" for a in node.names
                    if (module, a.name) in FORBIDDEN_FROM_IMPORTS]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ALL_INTERFACES - {""}:
            out.append(f"{where}: the all-interfaces address {node.value!r}")
        elif isinstance(node, ast.Call):
            func = dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if func in FORBIDDEN_CALLS:
                out.append(f"{where}: calls {func}")
            if func in REQUIRED_KEYWORDS:
                key, value = REQUIRED_KEYWORDS[func]
                given = keywords.get(key)
                if not (isinstance(given, ast.Constant) and given.value is value):
                    out.append(f"{where}: {func} without {key}={value}")
            if func in COMMANDS:
                shell = keywords.get("shell")
                if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                    out.append(f"{where}: {func} with shell=")
                command = node.args[0] if node.args else keywords.get("args")
                if command is not None and is_text(command):
                    out.append(f"{where}: {func} with a command string, not an argument list")
            for key in HOST_KEYWORDS & keywords.keys():
                value = keywords[key]
                if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value in ALL_INTERFACES:
                    out.append(f"{where}: {key}={value.value!r} binds all interfaces")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_source_has_no_unsafe_pattern(path):
    assert findings(path.read_text(), str(path.relative_to(ROOT))) == []


def test_the_scan_covers_the_project():
    names = {str(p.relative_to(ROOT)) for p in SOURCES}
    assert {"search/data.py", "search/supernet.py", "search/runners/adb.py", "spaces/mobilenetv2.py",
            "scripts/search_report.py"} <= names


BAD = {
    "import pickle": "imports pickle",
    "from pickle import loads": "imports from pickle",
    "import dill as d": "imports dill",
    "torch.load(path)": "torch.load without weights_only=True",
    "torch.load(path, weights_only=False)": "torch.load without weights_only=True",
    "np.load(path)": "np.load without allow_pickle=False",
    "numpy.load(path, allow_pickle=True)": "numpy.load without allow_pickle=False",
    "from numpy import load": "from numpy import load",
    "yaml.load(text)": "calls yaml.load",
    "yaml.load(text, Loader=yaml.Loader)": "calls yaml.load",
    "eval(text)": "calls eval",
    "exec(code)": "calls exec",
    "importlib.import_module(name)": "calls importlib.import_module",
    "os.system('adb devices')": "calls os.system",
    "os.popen(cmd)": "calls os.popen",
    "subprocess.run('adb devices', shell=True)": "with shell=",
    "subprocess.run(cmd, shell=use_shell)": "with shell=",
    "subprocess.check_output(f'adb -s {serial} shell ls')": "command string",
    "subprocess.Popen('adb ' + serial)": "command string",
    "app.run(host='0.0.0.0')": "the all-interfaces address",
    "serve(app, host='')": "binds all interfaces",
    "ray.init(dashboard_host='::')": "the all-interfaces address",
}


@pytest.mark.parametrize("source,finding", BAD.items(), ids=list(BAD))
def test_the_scan_finds_each_unsafe_pattern(source, finding):
    found = findings(source)
    assert found and finding in " ".join(found), found


@pytest.mark.parametrize("source", [
    "np.load(path, allow_pickle=False)", "torch.load(path, weights_only=True)", "yaml.safe_load(text)",
    "subprocess.run([sys.executable, '-m', 'pip'], check=True)", "subprocess.run(cmd, shell=False)",
    "re.compile('x')", "net.eval()", "ray.init(dashboard_host='127.0.0.1')",
])
def test_the_scan_passes_safe_patterns(source):
    assert findings(source) == []


# --- running: where a local Ray listens ------------------------------------------------------------

def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word little-endian
    return ipaddress.ip_address(words)


def listening(root: int) -> list[str]:
    """host:port of every TCP socket in LISTEN state owned by `root` or its descendants (Linux /proc)."""
    inodes = set()
    for pid in _descendants(root):
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                out.append(f"{_address(host)}:{int(port, 16)}")
    return out


def loopback(host_port: str) -> bool:
    address = ipaddress.ip_address(host_port.rpartition(":")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


CHILD = """
import json, os
from search.workers import Workers
from tests.test_safety import listening
with Workers(None, 1, 1, 0) as workers:
    workers.run(os.getpid)  # a task ran: the worker processes are up too
    print(json.dumps(listening(os.getpid())))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")
def test_a_local_ray_listens_on_loopback_only(tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=environment(tmp_path), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sockets = json.loads(result.stdout.strip().splitlines()[-1])
    assert sockets, "Ray's processes listen somewhere"
    assert [s for s in sockets if not loopback(s)] == []


@pytest.mark.slow
def test_the_readme_gives_the_opt_out_that_keeps_mlflow_telemetry_out_of_home(tmp_path, monkeypatch):
    """Outside pytest and CI, importing MLflow writes an installation id to ~/.config/mlflow/telemetry.json
    (its default, left as it is); the README names that file and the variable MLflow reads to opt out,
    and with it set nothing lands in the home folder."""
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY
    from mlflow.telemetry.installation_id import _get_telemetry_file_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert _get_telemetry_file_path() == tmp_path / "home" / ".config" / "mlflow" / "telemetry.json"
    readme = (ROOT / "README.md").read_text()
    assert "~/.config/mlflow/telemetry.json" in readme and f"{MLFLOW_DISABLE_TELEMETRY.name}=true" in readme

    (tmp_path / "home").mkdir()
    bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
            MLFLOW_DISABLE_TELEMETRY.name: "true"}  # no CI or pytest variables: MLflow's telemetry would be on
    result = subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient('sqlite:///m.db')"],
                            cwd=tmp_path, env=bare, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "home").rglob("*")) == []
