"""The Optuna storage of a search: per-head results, claims renewed by a heartbeat, the default database's lock.

Each head's result is stored in an Optuna study named ``{run key}:b{B}:l{L}:h{H}`` (directions ``maximize recall,
minimize density``) as the user attribute ``result`` (its exact front and baselines, JSON); a head counts as done
exactly when that attribute exists, so a run killed at any point resumes by redoing only the heads without one.
The run key (`run_key`) hashes what a head's result depends on (profile content hash, per-head settings, seed,
held-out prompts, tool version), not the budget: a finished search can be re-allocated at another budget from
storage.

Storage: SQLite next to the output by default (``<out>.optuna.db``, `default_storage`; write-ahead logging). A
search never deletes a database it did not create: an existing default database is continued with ``resume`` or
deleted with ``fresh`` and otherwise refused; a lock file (``<out>.optuna.db.lock``, `fcntl.flock`) makes a second
search on the same output refuse while the first runs; a database this run created is removed again when the run
fails before storing a head (`DefaultDatabase`). With ``--storage URL`` several processes or machines share one
relational database: each claims a unit (a study ``{key}:claim:b{B}:l{L}``, created atomically) before working on
it and renews the claim every `HEARTBEAT_S` seconds from a background thread; a claim whose owner is a dead process
on this host, or whose heartbeat is older than `STALE_CLAIM_S` (45 s; ``COMPACTSEARCH_CLAIM_TIMEOUT_S`` overrides
it), is taken over. A claim is deleted when its unit's heads are stored, and every claim study of the run when all
heads are done. Workers are named ``host:pid`` in claims (``COMPACTSEARCH_WORKER_ID`` overrides it, for hosts
that share a name). Trials are kept in memory unless ``keep_trials`` (writing a trial costs ~15 ms in SQLite,
more than searching a head).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
from pathlib import Path

import optuna
import torch

from compactsearch import __version__
from compactsearch.errors import InputError
from compactsearch.profile.store import Profile
from compactsearch.search.holdout import HoldoutSplit
from compactsearch.search.settings import SearchSettings
from compactsearch.search.study import HeadResult

__all__ = ["HeadStore", "DefaultDatabase", "OPEN_STORES", "default_storage", "run_key", "profile_hash",
           "STALE_CLAIM_S", "HEARTBEAT_S", "OWNERLESS_CLAIM_S"]

STALE_CLAIM_S = 45.0
OWNERLESS_CLAIM_S = 45.0
HEARTBEAT_S = 10.0


def _claim_timeout() -> tuple[float, float]:
    """``(stale after, heartbeat every)`` seconds: `STALE_CLAIM_S` / `HEARTBEAT_S`, or from
    ``COMPACTSEARCH_CLAIM_TIMEOUT_S`` (heartbeat a quarter of it)."""
    raw = os.environ.get("COMPACTSEARCH_CLAIM_TIMEOUT_S")
    if not raw:
        return STALE_CLAIM_S, HEARTBEAT_S
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not math.isfinite(t) or t < 2:
        raise InputError(f"COMPACTSEARCH_CLAIM_TIMEOUT_S must be a number of seconds >= 2, got {raw!r}")
    return t, t / 4


def default_storage(out: Path) -> Path:
    """The default SQLite file: ``<out>.optuna.db`` beside the config."""
    out = Path(out)
    return out.with_name(out.name + ".optuna.db")


def run_key(profile: Profile, settings: SearchSettings, split: HoldoutSplit | None) -> str:
    """The key of a run's stored results: a hash of what a head's result depends on (not the budget)."""
    d = settings.head_settings().to_dict()
    d.update(seed=settings.seed, holdout=list(split.holdout) if split else [], tool=__version__,
             profile=profile_hash(profile))
    if settings.objective != "recall":  # keeps the keys of recall searches stored before the option existed
        d["objective"] = settings.objective
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def profile_hash(profile: Profile) -> str:
    """The profile's content hash (of its tensors themselves when it was never saved)."""
    if profile.hashes:
        return profile.content_hash
    h = hashlib.sha256()  # an unsaved profile: hash the tensors themselves
    for b, l in profile.keys():
        h.update(profile.mass(b, l).to(torch.float16).numpy().tobytes())
    return h.hexdigest()


def _is_race(e: Exception) -> bool:
    msg = str(e).lower()
    return any(k in msg for k in ("unique constraint", "already exists", "locked", "duplicate"))


OPEN_STORES: list = []  # the storages the running search opened (`run_search` closes them when it returns)


class HeadStore:
    """The Optuna storage of one run: per-head result studies and per-unit claims."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
        for attempt in range(5):  # processes creating a fresh schema at once race on it: retry
            try:
                self.storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                break
            except Exception as e:  # sqlalchemy raises many types for bad URLs and unreachable servers
                if attempt == 4 or not _is_race(e):
                    raise InputError(f"cannot open Optuna storage {url!r}: {str(e).splitlines()[0]}") from e
                time.sleep(0.2 * (attempt + 1))
        if url.startswith("sqlite"):
            import sqlalchemy

            def _pragmas(conn, _record) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            sqlalchemy.event.listen(self.storage.engine, "connect", _pragmas)
            self.storage.engine.dispose()
        OPEN_STORES.append(self)  # closed when run_search returns
        self.owner = os.environ.get("COMPACTSEARCH_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"
        self._ownerless: dict[str, float] = {}
        self.stale_s, self.heartbeat_s = _claim_timeout()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _name(self, b: int, l: int, h: int) -> str:
        return f"{self.key}:b{b}:l{l}:h{h}"

    def _drop(self, name: str) -> None:
        """Delete a study that another process may have deleted already."""
        try:
            optuna.delete_study(study_name=name, storage=self.storage)
        except KeyError:
            pass

    def close(self) -> None:
        """Close the database connections (a finished or failed run keeps no file open)."""
        try:
            self.storage.remove_session()
            self.storage.engine.dispose()
        except Exception:  # closing a storage that already failed: nothing more to release
            pass

    def done(self) -> dict[tuple[int, int, int], HeadResult]:
        out = {}
        prefix = f"{self.key}:b"
        for s in self.storage.get_all_studies():
            if s.study_name.startswith(prefix) and "result" in s.user_attrs:
                r = HeadResult.from_dict(s.user_attrs["result"])
                out[(r.bucket, r.layer, r.head)] = r
        return out

    def write(self, r: HeadResult) -> None:
        name = self._name(r.bucket, r.layer, r.head)
        for _ in range(3):
            try:
                old = optuna.load_study(study_name=name, storage=self.storage)
                if "result" in old.user_attrs:
                    return  # another worker stored this head already (the same result: searches are pure)
            except KeyError:
                pass
            else:
                self._drop(name)  # left by a killed run: start over
            try:
                study = optuna.create_study(storage=self.storage, study_name=name,
                                            directions=["maximize", "minimize"])
            except optuna.exceptions.DuplicatedStudyError:
                continue  # another worker is writing the same head right now: look again
            if r.study_trials:
                study.add_trials(r.study_trials)
            study.set_user_attr("result", r.to_dict())
            return

    # claims ---------------------------------------------------------------------------------------------
    def claim(self, b: int, l: int) -> bool:
        """Claim unit (b, l); False when another live process holds it."""
        name = f"{self.key}:claim:b{b}:l{l}"
        for _ in range(2):
            try:
                s = optuna.create_study(storage=self.storage, study_name=name)
                s.set_user_attr("owner", self.owner)
                s.set_user_attr("time", time.time())
                with self._lock:
                    self._held.add(name)
                return True
            except optuna.exceptions.DuplicatedStudyError:
                if not self._stale(name):
                    return False
                self._drop(name)
        return False

    def _stale(self, name: str) -> bool:
        try:
            attrs = optuna.load_study(study_name=name, storage=self.storage).user_attrs
        except KeyError:
            return True
        if "owner" not in attrs or "time" not in attrs:  # being created right now, or its creator died at once
            first = self._ownerless.setdefault(name, time.time())
            return time.time() - first > OWNERLESS_CLAIM_S
        owner, t = attrs["owner"], float(attrs["time"])
        if owner == self.owner:
            return True
        host, _, pid = owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return time.time() - t > self.stale_s

    def left(self, b: int, l: int, heads: list[int]) -> list[int]:
        """The heads of unit (b, l) among ``heads`` with no stored result (another worker may have stored some
        and released its claim since this worker listed its units)."""
        out = []
        for h in heads:
            try:
                sid = self.storage.get_study_id_from_name(self._name(b, l, h))
                if "result" in self.storage.get_study_user_attrs(sid):
                    continue
            except KeyError:
                pass
            out.append(h)
        return out

    def release(self, b: int, l: int) -> None:
        """Delete this worker's claim of unit (b, l) (its heads are stored)."""
        name = f"{self.key}:claim:b{b}:l{l}"
        with self._lock:
            held = name in self._held
            self._held.discard(name)
        if held:
            self._drop(name)

    def drop_claims(self) -> None:
        """Delete every claim study of this run (all its heads are stored; leftovers of dead workers too)."""
        prefix = f"{self.key}:claim:"
        for s in self.storage.get_all_studies():
            if s.study_name.startswith(prefix):
                self._drop(s.study_name)

    # heartbeat ------------------------------------------------------------------------------------------
    def __enter__(self) -> HeadStore:
        """Start renewing this worker's claims every `heartbeat_s` seconds."""
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="compactsearch-claim-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        self._beat = None
        with self._lock:  # a failed run gives its units back at once (a finished one has released them all)
            names, self._held = sorted(self._held), set()
        for name in names:
            try:
                optuna.delete_study(study_name=name, storage=self.storage)
            except Exception:  # the storage itself may be what failed; the claims then go stale
                pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                names = sorted(self._held)
            for name in names:
                try:
                    sid = self.storage.get_study_id_from_name(name)
                    if self.storage.get_study_user_attrs(sid).get("owner") != self.owner:
                        raise KeyError(name)  # taken over while this worker was stalled
                    self.storage.set_study_user_attr(sid, "time", time.time())
                except KeyError:
                    with self._lock:
                        self._held.discard(name)
                except Exception:  # a storage hiccup: the next beat tries again (the claim lasts stale_s)
                    pass


class DefaultDatabase:
    """The default SQLite file of one output: locked for the run, never deleted unless this run made it (and
    stored nothing in it) or ``fresh`` asks for it."""

    SUFFIXES = ("", "-wal", "-shm", "-journal")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.fd: int | None = None
        self.created = False

    def _files(self) -> list[Path]:
        return [Path(str(self.path) + s) for s in self.SUFFIXES]

    def open(self, resume: bool, fresh: bool) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:  # lock a file that is still the lock file (a finishing run unlinks it after unlocking)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise InputError(f"another search ({holder}) is running with {self.path}; wait for it to finish "
                                 "or write to another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        existing = [p for p in self._files() if p.exists()]
        if existing and fresh:
            for p in existing:
                p.unlink()
        elif existing and not resume:
            raise InputError(f"{self.path} holds an earlier search for this output: add --resume to continue it, "
                             "or --fresh to delete it and start over")
        self.created = not self.path.exists()

    def drop_if_unused(self) -> None:
        """After a failure: remove the database when this run created it and stored no head in it."""
        if self.fd is None or not self.created or not self.path.exists():
            return
        try:
            import sqlite3

            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            try:
                stored = con.execute("SELECT count(*) FROM study_user_attributes WHERE key = 'result'").fetchone()[0]
            finally:
                con.close()
        except Exception:  # unreadable (a full disk cut it short): nothing in it can be used
            stored = 0
        if not stored:
            for p in self._files():
                p.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            self.lock_path.unlink(missing_ok=True)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
