"""What the benchmarks here share: contender processes that answer in JSON lines, memory readings, rotation, the report.

Each contender of a benchmark runs in a process of its own (its own
interpreter, backend and allocator), started from the benchmark's script
with `--worker NAME`. A worker says things to the coordinator with `say()`:
one JSON object per line after `PREFIX` on its standard output, so that a
library's own printing never mixes in; the coordinator reads them through
`Contender.receive` and sends one-word commands on its standard input.
"""

import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading

PREFIX = "@@BENCH "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- worker side


def say(**message):
    print(PREFIX + json.dumps(message), flush=True)


def rss_mb():
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise OSError("VmRSS not found in /proc/self/status: resident memory is read on Linux only")


def peak_rss_mb():
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def commands():
    """The coordinator's commands to a worker, one at a time, until it says `quit` or closes the pipe."""
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            return
        yield command[0]


# ------------------------------------------------------------ coordinator side


class Contender:
    """One contender's worker process: `script --worker name *passthrough` under Keras backend `backend`."""

    def __init__(self, script, name, passthrough, backend=None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        if backend:
            env["KERAS_BACKEND"] = backend
        self.name = name
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name.replace('/', '-')}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(script), "--worker", name, *passthrough],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.messages = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self.messages.put(json.loads(line[len(PREFIX) :]))
        self.messages.put(None)

    def receive(self, timeout):
        """The worker's next message, or a `failed` one naming its log when it ends or says nothing within `timeout` s."""
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            message = None
        if message is None:
            self.stop(keep_log=True)
            self.log.seek(0)
            tail = self.log.read()[-1500:]
            return {
                "status": "failed",
                "reason": f"no answer within {timeout:.0f}s or the process ended; log {self.log.name}:\n{tail}",
            }
        return message

    def ask(self, command, timeout):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.receive(timeout)

    def stop(self, keep_log=False):
        """Ends the worker; its log is deleted unless it is kept to explain a failure."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        if not keep_log and os.path.exists(self.log.name):
            self.log.close()
            os.remove(self.log.name)


def passthrough(args):
    """The coordinator's parsed flags as a worker's command line (every flag but `--worker`)."""
    return [f"--{name}={value}" for name, value in sorted(vars(args).items()) if name != "worker" and value is not None]


def rotated(names, repeat):
    """`names` rotated by `repeat`, so that over the repeats every contender runs at every position."""
    names = list(names)
    shift = repeat % len(names) if names else 0
    return names[shift:] + names[:shift]


def print_json_lines(lines):
    print()
    for line in lines:
        print(json.dumps(line))
