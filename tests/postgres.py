"""A throwaway PostgreSQL server for the tests that need a real multi-process database (Optuna's RDBStorage)."""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from tests.conftest import free_port


def postgres_bin() -> Path:
    """Debian keeps initdb/pg_ctl off PATH, under /usr/lib/postgresql/<major>/bin; take the newest."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        raise RuntimeError("no PostgreSQL server binaries (initdb) found: apt-get install postgresql")
    return Path(initdb).parent


@contextlib.contextmanager
def running_postgres(workdir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server from Debian's binaries on a free loopback port; yields its URL
    (postgresql://USER:PASSWORD@127.0.0.1:PORT/DB) and stops it, removing nothing outside workdir."""
    import psycopg2  # only the tests that start a server need the driver

    bindir = postgres_bin()
    as_user: dict = {}
    run_dir, scratch = Path(workdir) / "postgres", None
    if os.geteuid() == 0:  # postgres refuses to run as root: drop to Debian's `postgres` system user
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root but there is no `postgres` user: apt-get install postgresql") from None
        as_user = {"user": pg.pw_uid, "group": pg.pw_gid, "extra_groups": [], "cwd": "/"}
        # pytest's tmp_path sits under /tmp/pytest-of-root (mode 700), which `postgres` cannot traverse
        if subprocess.run(["test", "-x", str(workdir)], **as_user).returncode != 0:
            scratch = Path(tempfile.mkdtemp(prefix="pg-"))
            run_dir = scratch / "postgres"
    run_dir.mkdir(parents=True)
    if as_user:
        for path in filter(None, (scratch, run_dir)):
            os.chown(path, as_user["user"], as_user["group"])
    data, log, port = run_dir / "data", run_dir / "server.log", free_port()
    user, password = "optuna", secrets.token_hex(16)

    def pg_ctl(*args: str) -> subprocess.CompletedProcess:
        command = [str(bindir / "pg_ctl"), "-D", str(data), *args]
        return subprocess.run(command, capture_output=True, text=True, **as_user)

    try:
        pwfile = run_dir / "pwfile"
        pwfile.write_text(password + "\n")
        if as_user:
            os.chown(pwfile, as_user["user"], as_user["group"])
        init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "-A",
                               "scram-sha-256", "--encoding=UTF8", "--no-sync"],
                              capture_output=True, text=True, **as_user)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
        pwfile.unlink()
        # TCP only: no Unix socket, so a long tmp path cannot overflow sun_path (107 bytes) or need a socket dir
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        if pg_ctl("start", "-w", "-t", "60", "-l", str(log), "-o", options).returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else ["(no server log)"]
            raise RuntimeError("PostgreSQL did not start:\n" + "\n".join(tail))
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            conn.cursor().execute("CREATE DATABASE optuna")
        finally:
            conn.close()
        yield f"postgresql://{user}:{password}@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            pg_ctl("stop", "-m", "fast", "-w")
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
