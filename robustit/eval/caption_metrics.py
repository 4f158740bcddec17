"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) through pycocoevalcap.

Every number comes from pycocoevalcap's own classes, called the way its ``COCOEvalCap`` calls
them (PTB tokenisation of candidates and references, then each scorer), and is scaled x100 as
the paper reports. This module only makes those classes dependable:

- **Read-only installs.** The PTB tokenizer (and SPICE) write temporary files next to their
  jars. When the installed package folder is not writable, the needed sub-folders are copied
  once to ``$ROBUSTIT_CACHE/pycocoevalcap-<version>`` (default ``~/.cache/robustit``) and the
  classes are imported from that copy, so they run unchanged.
- **METEOR** starts its Java process once per evaluation and is closed afterwards; its stderr
  is drained so a chatty JVM can never block the pipe.
- **SPICE** needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap would download and no
  package registry carries. It runs only when the user points to a folder holding them
  (``spice_jars=`` or ``$ROBUSTIT_SPICE_JARS``); otherwise SPICE is ``None`` with a note.
- **Line breaks inside a caption** (``\\r``, ``\\v``, ``\\f``, U+2028, ...) make the Java
  tokenizer emit extra lines, which silently shifts every later caption onto the wrong image.
  Captions are flattened to one line first and the tokenizer's output is checked.

Imports no model code and not torch.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .pairing import check_paired, few_ids
from ..errors import ConfigError, RobustITError

SCORERS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
METRIC_KEYS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SPICE_JARS_ENV = "ROBUSTIT_SPICE_JARS"
CACHE_ENV = "ROBUSTIT_CACHE"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# SPICE 1.0's serialiser (FST) reflects into java.base; Java 16+ refuses that unless the
# packages are opened. Java 9+ launchers read JDK_JAVA_OPTIONS; Java 8 ignores it.
_SPICE_JAVA_OPTIONS = " ".join(
    f"--add-opens=java.base/{pkg}=ALL-UNNAMED"
    for pkg in ("java.lang", "java.lang.reflect", "java.util", "java.util.concurrent",
                "java.math", "java.net", "java.text", "java.io", "java.nio")
)
_SPICE_HINT = (f"pass spice_jars=<folder> (CLI/config option `spice_jars`) or set the "
               f"environment variable {SPICE_JARS_ENV}=<folder>, the folder holding "
               f"{' and '.join(CORENLP_JARS)}")


@dataclasses.dataclass
class CaptionScores:
    """The result of :func:`score_captions`.

    Attributes:
        metrics: metric name -> value x100 (``BLEU_1``..``BLEU_4``, ``METEOR``, ``ROUGE_L``,
            ``CIDEr``, ``SPICE``) for the requested scorers; ``None`` when a scorer could not
            run (``notes`` says why). Never a made-up value.
        seconds: wall-clock seconds per stage: ``tokenizer`` and each requested scorer.
        notes: human-readable remarks (why a metric is null, where the tokenizer ran from).
        n: number of scored captions.
    """

    metrics: dict[str, float | None]
    seconds: dict[str, float]
    notes: list[str]
    n: int

    def to_dict(self) -> dict:
        """A JSON-ready dict (stored next to every evaluation result)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Environment: Java, the installed package, the writable copy
# --------------------------------------------------------------------------------------------

def java_path() -> str | None:
    """The ``java`` executable pycocoevalcap will start (it calls plain ``java``), or None."""
    return shutil.which("java")


def package_dir() -> Path:
    """The folder of the installed pycocoevalcap package (a namespace package: no __file__)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise RobustITError("pycocoevalcap is not installed; install it with "
                            "`pip install pycocoevalcap==1.2` (see requirements.lock)")
    return Path(list(spec.submodule_search_locations)[0])


def package_is_writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (tests patch this to simulate read-only).

    Tries a real file: permission bits alone mislead (root ignores them), and only a write
    shows a read-only mount or image layer.
    """
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def cache_root() -> Path:
    """Where the writable copy lives: ``$ROBUSTIT_CACHE`` or ``~/.cache/robustit``."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "robustit"
    try:
        version = importlib.metadata.version("pycocoevalcap")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Path(base).expanduser() / f"pycocoevalcap-{version}" / "pycocoevalcap"


def _copy_subfolder(src_pkg: Path, dst_pkg: Path, sub: str) -> None:
    """Copy ``src_pkg/sub`` to ``dst_pkg/sub`` once, atomically (safe for parallel runs)."""
    target = dst_pkg / sub
    if target.is_dir():
        return
    try:
        dst_pkg.mkdir(parents=True, exist_ok=True)
        (dst_pkg / "__init__.py").touch()  # makes the copy importable under its own alias
        tmp = Path(tempfile.mkdtemp(prefix=f".{sub}.", dir=dst_pkg))
    except OSError as exc:
        raise RobustITError(f"pycocoevalcap needs a writable copy of its {sub}/ folder, but "
                            f"{dst_pkg} cannot be written ({exc}); set {CACHE_ENV} to a "
                            f"writable folder") from None
    try:
        shutil.copytree(src_pkg / sub, tmp / sub, ignore=shutil.ignore_patterns(
            "__pycache__", "tmp", "cache", "stanford-corenlp-3.6.0*.jar"))
        try:
            os.rename(tmp / sub, target)
        except OSError:  # another process finished first: its copy is just as good
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _import_from(pkg_root: Path, module: str):
    """Import ``pycocoevalcap.<module>`` from the folder ``pkg_root`` under a private alias.

    The classes find their jars and temp folders through their module's ``__file__``, so a
    module imported from the copy works in the copy.
    """
    alias = "_robustit_pycocoevalcap_" + hashlib.sha1(str(pkg_root).encode()).hexdigest()[:10]
    if alias not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            alias, pkg_root / "__init__.py", submodule_search_locations=[str(pkg_root)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[alias] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(f"{alias}.{module}")


def _tokenizer_class(notes: list[str]):
    """PTBTokenizer from the installed package if writable, else from the cached copy."""
    src = package_dir()
    if package_is_writable(src / "tokenizer"):
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer
    dst = cache_root()
    _copy_subfolder(src, dst, "tokenizer")
    notes.append(f"pycocoevalcap folder {src} is not writable; ran the PTB tokenizer from the "
                 f"copy in {dst}")
    return _import_from(dst, "tokenizer.ptbtokenizer").PTBTokenizer


# --------------------------------------------------------------------------------------------
# Input checks and tokenisation
# --------------------------------------------------------------------------------------------

def _check_inputs(candidates: Mapping, references: Mapping) -> None:
    """Same ids on both sides, one string per candidate, a non-empty string list per reference."""
    check_paired("score_captions", candidates, references, "candidate", "reference")


def _one_line(text: str) -> str:
    """Join every kind of line break with a space (the Java tokenizer splits on all of them)."""
    return " ".join(text.splitlines())


def _tokenize(tokenizer_cls, captions: Mapping[object, Sequence[str]]) -> dict:
    """PTB-tokenise ``{id: [caption, ...]}`` and verify nothing shifted between ids."""
    coco_style = {k: [{"caption": _one_line(c)} for c in caps] for k, caps in captions.items()}
    out = tokenizer_cls().tokenize(coco_style)
    bad = [k for k, caps in captions.items() if len(out.get(k, ())) != len(caps)]
    if bad:
        raise RobustITError(f"PTB tokenizer returned a different number of captions for "
                            f"{len(bad)} id(s) ({few_ids(bad)}); a caption may hold a character the "
                            f"Java tokenizer treats as a line break. Please report it")
    return out


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------

def _bleu(gts: dict, res: dict, notes: list[str]) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu

    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"BLEU_{i + 1}": 100.0 * float(s) for i, s in enumerate(score)}


def _rouge(gts: dict, res: dict, notes: list[str]) -> dict:
    from pycocoevalcap.rouge.rouge import Rouge

    score, _ = Rouge().compute_score(gts, res)
    return {"ROUGE_L": 100.0 * float(score)}


def _cider(gts: dict, res: dict, notes: list[str]) -> dict:
    from pycocoevalcap.cider.cider import Cider

    if len(gts) == 1:  # CIDEr's idf is log(N / df) = 0 for a single image
        notes.append("CIDEr over a single caption is degenerate (idf = 0); score more captions")
    score, _ = Cider().compute_score(gts, res)
    return {"CIDEr": 100.0 * float(score)}


class _StderrTail:
    """Drains a pipe on a daemon thread, keeping the last lines for error messages."""

    def __init__(self, pipe, lines: int = 20):
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe) -> None:
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(pipe.readline, b""):
                self.lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        return " | ".join(self.lines)

    def close(self) -> None:
        """Wait for the drain to finish (the pipe has reached end of file once the JVM died)."""
        self._thread.join(timeout=5)


@contextlib.contextmanager
def meteor_session() -> Iterator[object]:
    """One pycocoevalcap ``Meteor`` (one JVM) for a whole evaluation, always shut down.

    Meteor only reads its folder, so it runs from the installed package even when read-only.
    Yields the Meteor instance; ``instance.stderr_tail.text()`` holds the JVM's last messages.
    """
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    # Meteor opens stderr as a pipe nobody reads: a full pipe would freeze the JVM mid-run.
    meteor.stderr_tail = _StderrTail(meteor.meteor_p.stderr)
    try:
        yield meteor
    finally:
        _close_meteor(meteor)


def _close_meteor(meteor) -> None:
    """Stop the JVM now (Meteor's own ``__del__`` would wait for garbage collection)."""
    proc = meteor.meteor_p
    with contextlib.suppress(OSError):
        proc.stdin.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    meteor.stderr_tail.close()
    with contextlib.suppress(OSError):
        proc.stdout.close()
        proc.stderr.close()
    # Meteor.compute_score keeps its lock when the JVM dies mid-call; its __del__ takes the
    # lock again, which would hang garbage collection. A fresh lock keeps __del__ harmless.
    meteor.lock = threading.Lock()


def _meteor(gts: dict, res: dict, notes: list[str]) -> dict:
    # Meteor's wire format separates fields with '|||'; pycocoevalcap strips it from the
    # hypothesis only, so a reference holding it would shift the fields.
    gts = {k: [r.replace("|||", "") for r in refs] for k, refs in gts.items()}
    with meteor_session() as meteor:
        try:
            score, _ = meteor.compute_score(gts, res)
        except (OSError, ValueError) as exc:  # JVM died: broken pipe or an empty reply line
            _close_meteor(meteor)  # also lets the drain thread collect the JVM's last words
            notes.append(f"METEOR failed ({exc!r}); Java said: {meteor.stderr_tail.text()}")
            return {"METEOR": None}
    return {"METEOR": 100.0 * float(score)}


def resolve_spice_jars(spice_jars: str | os.PathLike | None) -> Path | None:
    """The folder with the CoreNLP 3.6.0 jars (argument, else ``$ROBUSTIT_SPICE_JARS``), or None.

    Raises:
        ConfigError: a folder was given but lacks one of the two jars.
    """
    source, folder = "spice_jars", spice_jars
    if not folder:
        source, folder = SPICE_JARS_ENV, os.environ.get(SPICE_JARS_ENV)
    if not folder:
        return None
    folder = Path(folder).expanduser()
    missing = [jar for jar in CORENLP_JARS if not (folder / jar).is_file()]
    if missing:
        raise ConfigError(f"`{source}` points to {folder}, which lacks {', '.join(missing)}; "
                          f"put both Stanford CoreNLP 3.6.0 jars ({', '.join(CORENLP_JARS)}) "
                          f"there, or unset `{source}` to skip SPICE")
    return folder.resolve()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` refer to ``src`` (a symlink, or a copy where links are not allowed)."""
    if dst.is_symlink() and dst.resolve() == src:
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        tmp.symlink_to(src)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _spice_class(jars: Path):
    """Spice imported from the cached copy, with the user's CoreNLP jars linked into its lib/.

    SPICE always runs from the copy: it writes temp files and a parse cache next to its jar,
    and linking the user's jars into site-packages would modify the installation.
    """
    dst = cache_root()
    _copy_subfolder(package_dir(), dst, "spice")
    for jar in CORENLP_JARS:  # present, so pycocoevalcap's Spice() skips its download
        _link_or_copy(jars / jar, dst / "spice" / "lib" / jar)
    return _import_from(dst, "spice.spice").Spice


@contextlib.contextmanager
def _java_options(options: str) -> Iterator[None]:
    """Add ``options`` to ``JDK_JAVA_OPTIONS`` for child processes (Spice starts plain java)."""
    old = os.environ.get("JDK_JAVA_OPTIONS")
    os.environ["JDK_JAVA_OPTIONS"] = f"{old} {options}" if old else options
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JDK_JAVA_OPTIONS", None)
        else:
            os.environ["JDK_JAVA_OPTIONS"] = old


def _spice(gts: dict, res: dict, notes: list[str], jars: Path | None) -> dict:
    if jars is None:
        notes.append(f"SPICE is null: it needs the Stanford CoreNLP 3.6.0 jars, which are not "
                     f"downloaded automatically; {_SPICE_HINT}")
        return {"SPICE": None}
    spice_cls = _spice_class(jars)
    try:
        with _java_options(_SPICE_JAVA_OPTIONS):
            score, _ = spice_cls().compute_score(gts, res)
    except (subprocess.CalledProcessError, OSError) as exc:
        notes.append(f"SPICE is null: the SPICE jar failed ({exc}); its Java messages are printed "
                     f"above. Known causes: less than 8 GB of free memory (-Xmx8G), or a Java "
                     f"version SPICE 1.0 does not support (Java 8 or 11 are the safe choices)")
        return {"SPICE": None}
    if not math.isfinite(float(score)):
        notes.append("SPICE is null: the SPICE jar returned no finite score")
        return {"SPICE": None}
    return {"SPICE": 100.0 * float(score)}


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------

def _check_scorers(scorers: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scorers, str):
        scorers = (scorers,)
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown or not scorers:
        raise ConfigError(f"`scorers` must be a non-empty subset of {list(SCORERS)}; "
                          f"got unknown {unknown}" if unknown else "`scorers` is empty")
    return tuple(dict.fromkeys(scorers))


def _require_java() -> None:
    if java_path() is None:
        raise RobustITError(
            "caption metrics need Java 8+ on PATH: pycocoevalcap's PTB tokenizer (used by every "
            "metric), METEOR and SPICE are Java programs. Install a JRE (e.g. `apt-get install "
            "default-jre-headless`) or put `java` on PATH")


def check_environment(spice_jars: str | os.PathLike | None = None,
                      scorers: Sequence[str] = SCORERS) -> list[str]:
    """Fail now, not after hours of generation, if :func:`score_captions` could not run.

    Checks the scorer names, the SPICE jar folder (argument or ``$ROBUSTIT_SPICE_JARS``) and
    Java. Returns the notes known in advance (e.g. that SPICE will be null).

    Raises:
        ConfigError: unknown scorer, or a SPICE folder lacking the jars.
        RobustITError: Java is not installed.
    """
    scorers = _check_scorers(scorers)
    jars = resolve_spice_jars(spice_jars) if "SPICE" in scorers else None
    _require_java()
    if "SPICE" in scorers and jars is None:
        return [f"SPICE will be null: {_SPICE_HINT}"]
    return []


def _run_scorers(scorers: Sequence[str], gts: dict, res: dict, jars: Path | None,
                 notes: list[str], seconds: dict[str, float]) -> dict:
    """Run each requested scorer on the tokenised captions, timing each one."""
    runners = {"BLEU": _bleu, "METEOR": _meteor, "ROUGE_L": _rouge, "CIDEr": _cider,
               "SPICE": lambda g, r, n: _spice(g, r, n, jars)}
    metrics: dict[str, float | None] = {}
    for name in scorers:
        start = time.perf_counter()
        metrics.update(runners[name](gts, res, notes))
        seconds[name] = time.perf_counter() - start
    return {k: metrics[k] for k in METRIC_KEYS if k in metrics}


def score_captions(candidates: Mapping[object, str],
                   references: Mapping[object, Sequence[str]],
                   spice_jars: str | os.PathLike | None = None,
                   scorers: Sequence[str] = SCORERS) -> CaptionScores:
    """Score generated captions against references with pycocoevalcap, x100.

    Args:
        candidates: id -> generated caption ('' allowed). Ids are str or int.
        references: id -> list of reference captions; exactly the ids of ``candidates``.
        spice_jars: folder holding ``stanford-corenlp-3.6.0.jar`` and
            ``stanford-corenlp-3.6.0-models.jar``; default ``$ROBUSTIT_SPICE_JARS``. Without
            it SPICE is ``None`` and ``notes`` says how to enable it.
        scorers: subset of ``("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")``.

    Returns:
        CaptionScores with metrics x100, seconds per stage, notes and n.

    Raises:
        ConfigError: ids differ between the two mappings, unknown scorer, bad ``spice_jars``.
        DataError: empty input, a non-string caption, or an empty reference list.
        RobustITError: Java is not installed.
    """
    scorers = _check_scorers(scorers)
    _check_inputs(candidates, references)
    check_environment(spice_jars, scorers)
    jars = resolve_spice_jars(spice_jars) if "SPICE" in scorers else None
    notes: list[str] = []
    start = time.perf_counter()
    tokenizer_cls = _tokenizer_class(notes)
    gts = _tokenize(tokenizer_cls, references)
    res = _tokenize(tokenizer_cls, {k: [c] for k, c in candidates.items()})
    seconds = {"tokenizer": time.perf_counter() - start}
    metrics = _run_scorers(scorers, gts, res, jars, notes, seconds)
    return CaptionScores(metrics=metrics, seconds=seconds, notes=notes, n=len(candidates))
