"""Orchestration of `compactsearch search`: units of work, Optuna storage, resume, workers, the config.

Work is split into units, one per (bucket, layer): a worker loads that layer's mass once and searches its heads
(`compactsearch.search.study.search_head`). Each head's result is stored in an Optuna study named
``{run key}:b{B}:l{L}:h{H}`` (directions ``maximize recall, minimize density``) as the user attribute
``result`` (its exact front and baselines, JSON); a head counts as done exactly when that attribute exists, so
a run killed at any point resumes by redoing only the heads without one. Each head's search is a pure function
of (profile tensors, settings, a sampler seed derived from (seed, bucket, layer, head)), hence a resumed run
gives the same config as an uninterrupted one.

The run key hashes what a head's result depends on (profile content hash, per-head settings, seed, held-out
prompts, tool version), not the budget: a finished search can be re-allocated at another budget from storage.

Storage: SQLite next to the output by default (``<out>.optuna.db``; write-ahead logging). A search never deletes
a database it did not create: an existing default database is continued with ``resume`` or deleted with
``fresh`` and otherwise refused; a lock file (``<out>.optuna.db.lock``, `fcntl.flock`) makes a second search on
the same output refuse while the first runs; a database this run created is removed again when the run fails
before storing a head. With ``--storage URL`` several processes or machines share one relational database:
each claims a unit (a study ``{key}:claim:b{B}:l{L}``, created atomically) before working on it and renews the
claim every `HEARTBEAT_S` seconds from a background thread; a claim whose owner is a dead process on this host,
or whose heartbeat is older than `STALE_CLAIM_S` (45 s; ``COMPACTSEARCH_CLAIM_TIMEOUT_S`` overrides it), is
taken over. A claim is deleted when its unit's heads are stored, and every claim study of the run when all
heads are done. Workers are named ``host:pid`` in claims (``COMPACTSEARCH_WORKER_ID`` overrides it, for hosts
that share a name). Trials are kept in memory unless ``keep_trials`` (writing a trial costs ~15 ms in SQLite,
more than searching a head).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import optuna
import torch

from compactsearch import __version__
from compactsearch.config import Bucket, Config, HeadConfig, LayerConfig, summarize
from compactsearch.errors import InputError
from compactsearch.patterns import MAX_SINKS
from compactsearch.profile.store import Profile
from compactsearch.schedule import fraction
from compactsearch.search.baselines import min_pattern
from compactsearch.search.budget import plan_run, sparse_ranges
from compactsearch.search.evaluate import CostModel, ExactScorer, HeadTables, LayoutTables
from compactsearch.search.fidelity import HeadFidelity
from compactsearch.search.holdout import HoldoutSplit, holdout_report, split_prompts, unit_masses
from compactsearch.search.space import SearchSpace
from compactsearch.search.study import SAMPLERS, HeadResult, HeadSettings, search_head

__all__ = [
    "SearchSettings", "SearchOutcome", "run_search", "default_storage", "head_name", "summary_from_blocks",
    "STALE_CLAIM_S", "HEARTBEAT_S",
]

OBJECTIVES = ("auto", "fidelity", "recall")
STALE_CLAIM_S = 45.0
OWNERLESS_CLAIM_S = 45.0
DEFAULT_HEAD_DIM = 128
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


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search run depends on. ``budget`` and ``recall`` are fractions in (0, 1]."""

    budget: float
    recall: float = 0.9
    trials: int = 32
    max_groups: int = 3
    sampler: str = "nsga2"
    population: int = 16
    max_front: int = 24
    seed: int = 0
    holdout: int = 0
    greedy_lambda: float = math.inf
    objective: str = "auto"
    sinks: int = MAX_SINKS

    def check(self) -> None:
        """Raise `InputError` naming the first bad setting."""
        for name in ("budget", "recall"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or not 0 < v <= 1:
                raise InputError(f"--{name} must lie in (0, 1], got {v}")
        if self.trials < 0:
            raise InputError(f"--trials must be >= 0 (0: the baselines and the sweep only), got {self.trials}")
        if self.max_groups < 1:
            raise InputError(f"--groups must be >= 1, got {self.max_groups}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.holdout < 0:
            raise InputError(f"--holdout must be >= 0, got {self.holdout}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0 <= self.sinks <= MAX_SINKS:
            raise InputError(f"--sinks must lie in 0..{MAX_SINKS}, got {self.sinks}")
        if self.population < 2 or self.max_front < 4:
            raise InputError("population must be >= 2 and max_front >= 4")

    def head_settings(self) -> HeadSettings:
        return HeadSettings(self.recall, self.trials, self.max_groups, self.sampler, self.population,
                            self.max_front, self.greedy_lambda, self.sinks)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "recall": self.recall, "trials": self.trials, "groups": self.max_groups,
                "sampler": self.sampler, "population": self.population, "max_front": self.max_front,
                "seed": self.seed, "holdout": self.holdout,
                "greedy_lambda": None if math.isinf(self.greedy_lambda) else self.greedy_lambda,
                "objective": self.objective, "sinks": self.sinks}


@dataclass(frozen=True)
class SearchOutcome:
    """What a run produced: the config (already saved to ``path``) and the reports."""

    config: Config
    path: Path
    summary: dict
    below_floor: list[str]
    heads_searched: int
    heads_reused: int
    seconds: float
    storage: str
    results: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"config": str(self.path), "summary": self.summary, "below_floor": self.below_floor,
                "heads_searched": self.heads_searched, "heads_reused": self.heads_reused,
                "seconds": round(self.seconds, 2), "storage": self.storage}


def head_name(bucket: int, layer: int, head: int) -> str:
    """How reports name a head: ``b{bucket}.l{layer}.h{head}`` (bucket index in the profile)."""
    return f"b{bucket}.l{layer}.h{head}"


def default_storage(out: Path) -> Path:
    """The default SQLite file: ``<out>.optuna.db`` beside the config."""
    out = Path(out)
    return out.with_name(out.name + ".optuna.db")


def _head_seed(seed: int, bucket: int, layer: int, head: int) -> int:
    h = hashlib.sha256(f"{seed}:{bucket}:{layer}:{head}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def _run_key(profile: Profile, settings: SearchSettings, split: HoldoutSplit | None) -> str:
    d = settings.head_settings().to_dict()
    d.update(seed=settings.seed, holdout=list(split.holdout) if split else [], tool=__version__,
             profile=_profile_hash(profile))
    if settings.objective != "recall":  # keeps the keys of recall searches stored before the option existed
        d["objective"] = settings.objective
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _profile_hash(profile: Profile) -> str:
    if profile.hashes:
        return profile.content_hash
    h = hashlib.sha256()  # an unsaved profile: hash the tensors themselves
    for b, l in profile.keys():
        h.update(profile.mass(b, l).to(torch.float16).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- storage
def _is_race(e: Exception) -> bool:
    msg = str(e).lower()
    return any(k in msg for k in ("unique constraint", "already exists", "locked", "duplicate"))


_OPEN_STORES: list = []  # the storages the running search opened (`run_search` closes them when it returns)


class _Store:
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
        _OPEN_STORES.append(self)  # closed when run_search returns
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
    def __enter__(self) -> _Store:
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


# ------------------------------------------------------------------------------------------------- workers
_W: dict = {}


def _init_worker(profile: Profile, head_settings: HeadSettings, seed: int, split: HoldoutSplit | None,
                 keep_trials: bool, fidelity: bool = False) -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    layout = profile.layout()
    _W.update(profile=profile, settings=head_settings, seed=seed, split=split, keep_trials=keep_trials,
              fidelity=fidelity,
              tables=LayoutTables(layout), scorer=ExactScorer(layout),
              space=SearchSpace(layout.grid_thw, head_settings.max_groups))


def _check_mass(profile: Profile, b: int, l: int, m: torch.Tensor, what: str) -> None:
    nb = profile.layout().num_blocks
    if m.shape[-3:] != (profile.num_heads, nb, nb):
        raise InputError(f"profile {profile.root}: {what} of bucket {b}, layer {l} has shape {tuple(m.shape)}, "
                         f"expected [..., {profile.num_heads}, {nb}, {nb}]; the profile is corrupt")
    if not torch.isfinite(m).all():
        raise InputError(f"profile {profile.root}: {what} of bucket {b}, layer {l} contains NaN or inf; "
                         "re-run the profile")


def _search_unit(b: int, l: int, heads: list[int]) -> list[HeadResult]:
    w = _W
    prof: Profile = w["profile"]
    mass = prof.mass(b, l)
    _check_mass(prof, b, l, mass, "block mass")
    pm = prof.prompt_mass(b, l) if w["split"] is not None and w["split"].holdout else None
    if pm is not None:
        _check_mass(prof, b, l, pm, "per-prompt block mass")
    calib, held = unit_masses(mass, pm, w["split"])
    # per-prompt mass of the calibration prompts: sink candidates must hold in each (`search.sinks`)
    sink_pm = None
    if w["settings"].sinks and prof.per_prompt:
        sink_pm = pm if pm is not None else prof.prompt_mass(b, l)
        if sink_pm is not None and w["split"] is not None and w["split"].holdout:
            sink_pm = sink_pm[list(w["split"].calibration)]
    factor = prof.value_factor(b, l) if w.get("fidelity") else None
    if factor is not None:
        nb = prof.layout().num_blocks
        if factor.dim() != 3 or tuple(factor.shape[:2]) != (prof.num_heads, nb) or not torch.isfinite(factor).all():
            raise InputError(f"profile {prof.root}: value factor of bucket {b}, layer {l} has shape "
                             f"{tuple(factor.shape)} or non-finite values, expected [{prof.num_heads}, {nb}, r]; "
                             "re-run the profile or use --objective recall")
    out = []
    for h in heads:
        ht = HeadTables(w["tables"], calib[h])
        fid = None if factor is None else HeadFidelity(calib[h], factor[h], w["scorer"].block_mask)
        out.append(search_head(ht, w["scorer"], calib[h], w["space"], w["settings"],
                               _head_seed(w["seed"], b, l, h), (b, l, h),
                               None if held is None else held[h], w["keep_trials"], fid,
                               None if sink_pm is None else sink_pm[:, h]))
    return out


# --------------------------------------------------------------------------------------------------- run
def _recipe_warmup(profile: Profile) -> int:
    r = profile.recipe or {}
    v = r.get("dense_warmup")
    if v is None and isinstance(r.get("profile"), dict):
        v = r["profile"].get("dense_warmup")
    return int(v or 0)


def _dense_cost(cost_model: CostModel | None, nb: int) -> Callable[[float], float]:
    if cost_model is None:
        return lambda blocks: blocks / (nb * nb)
    dense = cost_model.cost(nb * nb, nb)
    return lambda blocks: cost_model.cost(blocks, nb) / dense


def run_search(
    profile: Profile | Path,
    settings: SearchSettings,
    out: Path,
    *,
    storage: str | None = None,
    resume: bool = False,
    workers: int = 1,
    cost_model: CostModel | None = None,
    keep_trials: bool = False,
    progress: Callable[[int, int], None] | None = None,
    arguments: dict | None = None,
    fresh: bool = False,
) -> SearchOutcome:
    """Search every head of ``profile``, allocate the budget, write the config to ``out``.

    Args:
        profile: a `Profile` or its directory.
        settings: the search settings (checked here).
        out: config path (written atomically).
        storage: Optuna RDB URL; default SQLite `default_storage(out)`.
        resume: continue the run stored in the default SQLite file (without it, or ``fresh``, an existing one is
            refused).
        fresh: delete an existing default SQLite file first and start over.
        workers: processes searching units in parallel (1: in this process).
        cost_model: measured kernel cost model; default cost = blocks computed.
        keep_trials: also store every Optuna trial (slow).
        progress: ``progress(heads_done, heads_total)`` after each stored head.
        arguments: the command line's arguments, recorded in the provenance.
    """
    if resume and fresh:
        raise InputError("--resume continues the stored search and --fresh deletes it: give one of them")
    if fresh and storage is not None:
        raise InputError("--fresh deletes the default SQLite database; with --storage, delete the studies in that "
                         "database yourself (or use another database)")
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    torch.set_num_threads(1)  # small tensor ops: one thread is several times faster than two here
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = _DefaultDatabase(default_storage(out)) if storage is None else None
    opened = len(_OPEN_STORES)
    try:
        if db is not None:
            db.open(resume, fresh)
        return _run_search(profile, settings, out, storage, resume, workers, cost_model, keep_trials, progress,
                           arguments)
    except BaseException:
        while len(_OPEN_STORES) > opened:  # close before removing the files
            _OPEN_STORES.pop().close()
        if db is not None:
            db.drop_if_unused()
        raise
    finally:
        while len(_OPEN_STORES) > opened:
            _OPEN_STORES.pop().close()
        if db is not None:
            db.close()
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)


class _DefaultDatabase:
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


def _run_search(profile, settings, out, storage, resume, workers, cost_model, keep_trials, progress, arguments):
    t0 = time.perf_counter()
    settings.check()
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    profile_path = None
    if not isinstance(profile, Profile):
        profile_path = Path(profile)
        profile = Profile.load(profile_path)
    layout = profile.layout()
    nb = layout.num_blocks
    L, H = profile.num_layers, profile.num_heads
    if settings.objective == "auto":
        settings = replace(settings, objective="fidelity" if profile.has_values else "recall")
    elif settings.objective == "fidelity" and not profile.has_values:
        raise InputError("--objective fidelity needs value statistics, and this profile has none (it was made "
                         "before they were recorded); re-run compactsearch profile or use --objective recall")
    split = None
    if settings.holdout:
        if not profile.per_prompt:
            raise InputError("--holdout needs per-prompt tensors, and this profile has none; re-run the profile "
                             "with profile.per_prompt: true in the recipe")
        n_prompts = len(profile.prompts) or profile.prompt_mass(0, 0).shape[0]
        split = split_prompts(n_prompts, settings.holdout, settings.seed)

    to_cost = _dense_cost(cost_model, nb)
    buckets = [tuple(b) for b in profile.buckets]
    min_warmup = max(_recipe_warmup(profile), buckets[0][0])
    ranges = sparse_ranges(buckets, min_warmup)
    if not ranges:
        raise InputError(f"the recipe's dense_warmup ({min_warmup}) covers every profiled bucket "
                         f"{[list(b) for b in buckets]}: there is nothing to search")
    searched = [i for i, _ in ranges]
    # before any search: the whole run's cheapest plan (the required dense steps, every head at its own tile)
    sparse = sum(e - a for _, (a, e) in ranges)
    cheapest = (profile.num_steps - sparse + sparse * to_cost(ExactScorer(layout).blocks(min_pattern()))
                ) / profile.num_steps
    if settings.budget < cheapest - 1e-12:
        least = math.ceil(cheapest * 1e4) / 1e4
        dense = f" and {profile.num_steps - sparse} dense steps" if sparse < profile.num_steps else ""
        raise InputError(f"budget {settings.budget:g} is too small for the whole run: the cheapest patterns (every "
                         f"query tile sees only its own tile, text dense){dense} need {cheapest:.4f} of dense "
                         f"attention; use --budget >= {least:g}")

    key = _run_key(profile, settings, split)
    if storage is None:  # run_search holds its lock and has refused or removed an earlier database
        db = default_storage(out)
        db.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{db.resolve()}"
    else:
        url = storage
    store = _Store(url, key)
    results = {k: v for k, v in store.done().items() if k[0] in searched}
    total_heads = len(searched) * L * H
    units = [(b, l, [h for h in range(H) if (b, l, h) not in results]) for b in searched for l in range(L)]
    units = [u for u in units if u[2]]
    if progress:
        progress(len(results), total_heads)

    computed = [0]

    def store_unit(res: list[HeadResult]) -> None:
        for r in res:
            store.write(r)
            results[(r.bucket, r.layer, r.head)] = r
        computed[0] += len(res)
        if progress:
            progress(len(results), total_heads)

    init_args = (profile, settings.head_settings(), settings.seed, split, keep_trials,
                 settings.objective == "fidelity")
    if workers == 1 or len(units) <= 1:
        try:
            _init_worker(*init_args)
            _run_units(units, store, store_unit, lambda u: _search_unit(*u), None)
        finally:
            _W.clear()
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                 initializer=_init_worker, initargs=init_args) as pool:
            _run_units(units, store, store_unit, None, (pool, workers))
    if len(results) < total_heads:  # heads other processes sharing the storage finished
        results.update({k: v for k, v in store.done().items() if k[0] in searched and k not in results})
    missing = [(b, l, h) for b in searched for l in range(L) for h in range(H) if (b, l, h) not in results]
    if missing:
        raise InputError(f"{len(missing)} heads were not searched (first: {head_name(*missing[0])}); re-run with "
                         "--resume")
    store.drop_claims()

    config, summary, below = _build_config(profile, profile_path, settings, results, min_warmup, to_cost, split,
                                           cost_model, key, arguments or {})
    config.save(Path(out))
    return SearchOutcome(config, Path(out), summary, below, computed[0], total_heads - computed[0],
                         time.perf_counter() - t0, "sqlite (default)" if storage is None else "external",
                         results)


def _run_units(units, store: _Store, store_unit, run_inline, pool_spec) -> None:
    """Claim and run units; wait for units other processes hold, taking stale claims over."""
    with store:  # renews this worker's claims while units run
        _run_units_claimed(units, store, store_unit, run_inline, pool_spec)


def _run_units_claimed(units, store: _Store, store_unit, run_inline, pool_spec) -> None:
    pending = list(units)
    deferred = []
    if run_inline is not None:
        while pending or deferred:
            if not pending:
                time.sleep(1.0)
                pending, deferred = _recheck(store, deferred), []
                continue
            u = pending.pop(0)
            if store.claim(u[0], u[1]):
                u = (u[0], u[1], store.left(*u))
                if u[2]:
                    store_unit(run_inline(u))
                store.release(u[0], u[1])
            else:
                deferred.append(u)
        return
    pool, workers = pool_spec
    running = {}
    while pending or deferred or running:
        while pending and len(running) < 2 * workers:
            u = pending.pop(0)
            if store.claim(u[0], u[1]):
                u = (u[0], u[1], store.left(*u))
                if u[2]:
                    running[pool.submit(_search_unit, *u)] = u
                else:
                    store.release(u[0], u[1])
            else:
                deferred.append(u)
        if not running:
            time.sleep(1.0)
            pending, deferred = _recheck(store, deferred), []
            continue
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for f in done:
            u = running.pop(f)
            store_unit(f.result())
            store.release(u[0], u[1])
        if not pending and deferred and not running:
            pending, deferred = _recheck(store, deferred), []


def _recheck(store: _Store, deferred: list) -> list:
    """Units another process held: drop the heads it finished; the rest are tried again."""
    done = store.done()
    out = []
    for b, l, heads in deferred:
        left = [h for h in heads if (b, l, h) not in done]
        if left:
            out.append((b, l, left))
    return out


def summary_from_blocks(config: Config, blocks: dict[tuple[int, int, int], int]) -> dict:
    """`compactsearch.config.summarize` from known per-head block counts (no mask is rebuilt).

    ``blocks`` is keyed by (profile bucket index, layer, head) in the order of ``config.buckets``; the tests check
    that the result equals ``summarize(config)``.
    """
    by_bucket: dict[int, int] = {}
    for (b, _, _), n in blocks.items():
        by_bucket[b] = by_bucket.get(b, 0) + n
    return summarize(config, [by_bucket[b] for b in sorted(by_bucket)])


def _head_config(head: int, p, nb: int) -> HeadConfig:
    """A chosen front point as the config's head entry, with its oracle numbers when the search recorded them."""
    return HeadConfig(head, p.pattern, p.recall, p.blocks / (nb * nb), p.oracle_recall, p.oracle_fidelity,
                      p.efficiency)


def _build_config(profile, profile_path, settings, results, min_warmup, to_cost, split, cost_model, key,
                  arguments):
    layout = profile.layout()
    nb = layout.num_blocks
    L, H = profile.num_layers, profile.num_heads
    floor = settings.recall
    buckets = [tuple(b) for b in profile.buckets]
    n_run = profile.num_steps
    plan = plan_run(buckets, n_run, min_warmup, results, L, H, settings.budget, floor, cost_of=to_cost)
    keys, alloc = list(plan.keys), plan.allocation
    fronts = [results[k] for k in keys]
    chosen = {k: fronts[i].front[alloc.choice[i]] for i, k in enumerate(keys)}

    cfg_buckets = []
    for b, rng in plan.buckets:
        layers = []
        for l in range(L):
            heads = tuple(_head_config(h, chosen[(b, l, h)], nb) for h in range(H))
            layers.append(LayerConfig(l, heads))
        cfg_buckets.append(Bucket.of_steps(rng, n_run, tuple(layers), b))

    below = [head_name(*keys[i]) for i in alloc.below_floor]
    # baselines at the floor: the search's cheapest floor-meeting point against greedy and best cube, over the
    # sparse steps
    cw = list(plan.weights)
    w_sum = sum(cw)
    w_by_key = {k: w / w_sum for k, w in zip(keys, cw, strict=True)}
    dens = {"search": 0.0, "greedy": 0.0, "cube": 0.0}
    dominated = 0
    for k in keys:
        r, w = results[k], w_by_key[k] / (nb * nb)
        dens["search"] += w * r.cheapest_feasible(floor).blocks
        dens["greedy"] += w * r.greedy.blocks
        dens["cube"] += w * r.cube.blocks
        if all(any(p.value >= base.value and p.blocks <= base.blocks for p in r.front)
               for base in (r.greedy, r.cube)):
            dominated += 1
    baselines = {
        "tau": floor,
        "density_search": round(dens["search"], 5),
        "density_greedy": round(dens["greedy"], 5),
        "density_best_cube": round(dens["cube"], 5),
        "density_saved_vs_best_cube": round(dens["cube"] - dens["search"], 5),
        "density_saved_vs_greedy": round(dens["greedy"] - dens["search"], 5),
        "heads_dominating_baselines": f"{dominated}/{len(keys)}",
    }
    search_block = settings.to_dict()
    if cost_model is not None:
        search_block["cost_model"] = cost_model.to_dict()
    provenance = {
        "kind": "searched",
        "profile": str(profile_path) if profile_path else (str(profile.root) if profile.root else "in-memory"),
        "profile_hash": _profile_hash(profile),
        "tool_version": __version__,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "seed": settings.seed,
        "run_key": key,
        "arguments": arguments,
    }
    model = profile.model or {}
    recipe = profile.recipe or {}
    rmodel = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    config = Config(
        model_id=str(model.get("id") or rmodel.get("id") or "unknown"),
        adapter=str(model.get("adapter") or rmodel.get("adapter") or "unknown"),
        geometry=profile.geometry,
        num_layers=L,
        num_heads=H,
        head_dim=int(model.get("head_dim") or 0) or DEFAULT_HEAD_DIM,
        tile=tuple(profile.tile),
        block_size=profile.block_size,
        num_steps=n_run,
        warmup=fraction(plan.dense_warmup, n_run),
        buckets=tuple(cfg_buckets),
        search=search_block,
        provenance=provenance,
    )
    summary = summary_from_blocks(config, {k: p.blocks for k, p in chosen.items()})
    summary["cost_vs_dense"] = round(plan.cost, 5)
    summary["recall_floor"] = floor
    summary["heads_below_floor"] = len(below)
    if below:
        summary["below_floor"] = below
    summary["recall_min_block"] = round(min(p.recall_min for p in chosen.values()), 5)
    summary["objective"] = settings.objective
    if settings.objective == "fidelity":
        summary["fidelity_mean"] = round(sum(w_by_key[k] * chosen[k].value for k in keys), 5)
    summary["value_whole_run"] = round(plan.value, 5)
    summary["dense_warmup_steps"] = plan.dense_warmup
    summary["warmup_tried"] = [list(t) for t in plan.tried]
    summary["bucket_steps"] = {f"b{b}": list(rng) for b, rng in plan.buckets}
    summary["baselines"] = baselines
    if split is not None and split.holdout:
        rows = [(head_name(*k), w_by_key[k], chosen[k].recall, chosen[k].holdout_recall)
                for k in keys]
        rep = holdout_report(rows, list(profile.prompts), split)
        summary["holdout"] = {k: v for k, v in rep.items() if k != "per_head"}
        per_head = rep["per_head"]
    else:
        per_head = None
    config = replace(config, summary=summary)
    if per_head is not None:  # per-head numbers go to --json, not into the config
        summary = {**summary, "holdout_per_head": per_head}
    return config, summary, below
