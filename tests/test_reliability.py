"""Hard to break: every class of failure, several cases each, through the CLIs.

Each case asserts the exit code, the one line that names the problem (no traceback), and that
nothing was left behind or overwritten (file listings and checksums before and after).
Classes: 1 processes, 2 clobbering, 3 arguments, 4 training data, 5 checkpoints,
6 evaluation, 7 full disks (tmpfs, as root), 8 convert.py and data.py (in 3 and 7), 9 one
writer per output folder, 10 interrupts at step boundaries, 11 results tied to what made
them, 12 leftovers.
"""
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SMALL, make_random_weights, music_like, run_script
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.data.synth import generate_dataset

TINY_TRAIN = ["--umx-train", "--is-wav", "--source", "bass", "--batch-size", "2",
              "--hidden-size", "16",
              "--nfft", "512", "--nhop", "128", "--samples-per-track", "2", "--seq-dur", "0.5",
              "--context", "cpu", "--epochs", "1"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def snapshot(folder):
    """{relative path: sha256} of every file below `folder` (hidden ones too)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def the_error(stderr, start="error: "):
    """The one line that reports the failure: no traceback, exactly one such line, last."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reports = [line for line in lines if line.startswith(start)]
    assert len(reports) == 1 and lines[-1] == reports[0], stderr
    return reports[0]


def staging_left(folder):
    return [os.path.join(b, n) for b, dirs, files in os.walk(folder) for n in dirs + files
            if n.startswith(".tmp-umx-")]


def children(pid):
    """pids of the live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _default_signals():
    """In the child: the dispositions a terminal gives. A background job (`make test &`,
    nohup, some CI runners) inherits SIGINT ignored, and a Python started so keeps ignoring
    it: the tests that send Ctrl-C set what they rely on."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def start(script, *argv, env=None):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script + ".py"), *argv],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})), preexec_fn=_default_signals)


def wait_for(condition, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 training and 2 test tracks of generated music (2 s)."""
    return generate_dataset(str(tmp_path_factory.mktemp("synth")), nb_train=3, nb_test=2,
                            duration=2.0, seed=7, progress=False)


@pytest.fixture(scope="module")
def full_model(tmp_path_factory):
    """Two full-size targets (umxhq's shapes): the network runs long enough to be killed."""
    folder = str(tmp_path_factory.mktemp("full") / "full")
    make_random_weights(folder, targets=("vocals", "drums"))
    return folder


@pytest.fixture(scope="module")
def long_song(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("song") / "song.wav")
    sf.write(path, music_like(40.0, 44100), 44100, subtype="FLOAT")
    return path


def copy_dataset(dataset, tmp_path, name="data"):
    root = str(tmp_path / name)
    shutil.copytree(dataset, root)
    return root


# --------------------------------------------------------------------------------------
# 1. processes never outlive their parent
# --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_workers_end_with_the_separation(tmp_path, full_model, long_song, signum):
    out = str(tmp_path / "out")
    proc = start("test", "--inputs", long_song, "--model", full_model, "--out-dir", out,
                 "--targets", "vocals", "drums", "--context", "cpu")
    workers = wait_for(lambda: len(children(proc.pid)) >= 2 and children(proc.pid))
    time.sleep(0.3)  # the workers compute
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=60)
    time.sleep(1.0)
    assert not [w for w in workers if alive(w)], "a worker outlived test.py"
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return
    line = the_error(stderr, "interrupted")
    assert proc.returncode == 128 + signum and ("Ctrl-C" in line or "SIGTERM" in line), stderr
    assert not os.path.exists(out)  # created by the run, removed again: nothing left behind


@pytest.mark.slow
def test_scoring_workers_end_with_eval(tmp_path):
    root = generate_dataset(str(tmp_path / "data"), nb_train=0, nb_test=4, duration=12.0,
                            seed=1, progress=False)
    proc = start("eval", "--estimates", root, "--root", root, "--is-wav", "--out-dir",
                 str(tmp_path / "out"), "--cores", "2", "--targets", "vocals", "drums")
    # --estimates = the dataset's own folders: every stem is a perfect estimate
    workers = wait_for(lambda: len(children(proc.pid)) >= 2 and children(proc.pid))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(1.0)
    assert not [w for w in workers if alive(w)], "a scoring worker outlived eval.py"


def test_decoder_ends_with_its_parent(tmp_path):
    """The ffmpeg process that decodes a compressed input dies with test.py."""
    m4a = str(tmp_path / "long.m4a")  # AAC: not for soundfile, decoded by an ffmpeg pipe
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=900",
                    "-ac", "2", "-c:a", "aac", m4a], check=True)
    folder = str(tmp_path / "model")
    make_random_weights(folder, **SMALL)
    proc = start("test", "--inputs", m4a, "--model", folder, "--out-dir", str(tmp_path / "out"),
                 "--context", "cpu")

    def ffmpeg_child():
        for pid in children(proc.pid):
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip() == "ffmpeg":
                        return [pid]
            except OSError:
                pass
        return None
    decoder = wait_for(ffmpeg_child)[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(1.0)
    assert not alive(decoder), "ffmpeg outlived test.py"


@pytest.mark.slow
def test_staging_of_a_killed_run_is_removed_by_the_next(tmp_path, full_model, long_song):
    out = str(tmp_path / "out")
    proc = start("test", "--inputs", long_song, "--model", full_model, "--out-dir", out,
                 "--targets", "vocals", "--context", "cpu")
    stale = wait_for(lambda: staging_left(out))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert all(os.path.exists(p) for p in stale)  # a SIGKILL cannot clean up ...
    # ... a live run's staging is left alone, the dead one's removed by the next run
    live = os.path.join(out, ".tmp-umx-live")  # another run's, locked while it lives
    os.makedirs(live)
    lock = os.open(live, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    short = str(tmp_path / "short.wav")
    sf.write(short, music_like(1.0, 44100), 44100)
    code, _, err = run_script("test", "--inputs", short, "--model", full_model, "--out-dir", out,
                              "--targets", "vocals", "--niter", "0", "--context", "cpu")
    assert code == 0, err
    assert staging_left(out) == [live]
    os.close(lock)
    assert sorted(os.listdir(os.path.join(out, "full", "short"))) == ["accompaniment.wav",
                                                                      "vocals.wav"]


def _ahead_threads():
    import threading
    return [t for t in threading.enumerate() if t.name == "ahead"]


def test_a_stream_computed_ahead_keeps_its_order_and_raises_the_producers_error():
    from unmix_nnabla.base.runtime import UmxError
    from unmix_nnabla.base.threads import ahead

    def items():
        yield from range(10)
        raise UmxError("chunk 10 failed")

    got = []
    with pytest.raises(UmxError, match="chunk 10 failed"):
        for item in ahead(items()):
            got.append(item)
    assert got == list(range(10)) and not _ahead_threads()


def test_a_stream_closed_early_stops_its_producer():
    from unmix_nnabla.base.threads import ahead
    produced = []

    def items():
        for k in range(1000):
            produced.append(k)
            yield k

    stream = ahead(items(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert not _ahead_threads()
    count = len(produced)
    time.sleep(0.2)
    assert len(produced) == count <= 3 + 2 + 1  # what was taken, queued, and being offered


def test_an_interrupt_while_waiting_for_the_producer_stops_it():
    from unmix_nnabla.base.threads import ahead

    def items():
        for k in range(100):
            time.sleep(0.05)
            yield k

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        got = []
        with pytest.raises(KeyboardInterrupt):
            for item in ahead(items()):
                got.append(item)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 0 < len(got) < 100 and not _ahead_threads()


def test_the_two_stages_of_a_stream_share_the_cores(monkeypatch):
    """Each stage's parallel work on its own share (both on all cores made the Wiener filter
    3x slower), numba's per-thread count included; the shares end with the stream."""
    import numba
    from unmix_nnabla.base import threads
    monkeypatch.setitem(threads._THREADS, "count", 5)
    seen = []

    def items():
        for k in range(3):
            seen.append(("producer", threads.compute_threads(), numba.get_num_threads()))
            yield k

    for _ in threads.ahead(items()):
        seen.append(("consumer", threads.compute_threads(), None))
    before = numba.get_num_threads()
    producer = {(n, c) for who, n, c in seen if who == "producer"}
    assert producer == {(3, min(3, numba.config.NUMBA_NUM_THREADS))}
    assert {n for who, n, _ in seen if who == "consumer"} == {2}
    assert threads.compute_threads() == 5 and numba.get_num_threads() == before


# --------------------------------------------------------------------------------------
# 2. outputs never clobber inputs or each other
# --------------------------------------------------------------------------------------

def test_outputs_never_replace_inputs_or_each_other(tmp_path):
    folder = str(tmp_path / "model")
    make_random_weights(folder, **SMALL)
    songs = {}
    for sub in ("a", "b"):
        os.makedirs(str(tmp_path / sub))
        songs[sub] = str(tmp_path / sub / "song.wav")
        sf.write(songs[sub], music_like(0.5, 8000, seed=len(sub)), 8000)
    os.makedirs(str(tmp_path / "a" / "model" / "vocals"))
    # where its own stem would go: <out-dir>/<model>/<song>/<target>.wav
    vocals = str(tmp_path / "a" / "model" / "vocals" / "vocals.wav")
    sf.write(vocals, music_like(0.5, 8000), 8000)
    other = str(tmp_path / "b" / "song.flac")
    sf.write(other, music_like(0.5, 8000), 8000)
    cases = [
        (["--inputs", songs["a"], songs["b"], "--out-dir", str(tmp_path / "out")],
         "would both write"),
        (["--inputs", songs["a"], other, "--out-dir", str(tmp_path / "out")], "would both write"),
        (["--inputs", songs["a"], songs["a"], "--out-dir", str(tmp_path / "out")],
         "argument --inputs: %r is given more than once" % songs["a"]),
        (["--inputs", vocals, "--out-dir", str(tmp_path / "a")], "would replace the input"),
        (["--inputs", vocals, "--out-dir", str(tmp_path / "a"), "--targets", "vocals", "vocals"],
         "argument --targets: 'vocals' is given more than once"),
    ]
    before = snapshot(str(tmp_path))
    for argv, message in cases:
        code, _, err = run_script("test", *argv, "--model", folder)
        assert code == (2 if "argument" in message else 1), (argv, err)
        assert message in the_error(err), (argv, err)
        assert snapshot(str(tmp_path)) == before, argv
        assert not os.path.exists(str(tmp_path / "out"))


def test_eval_and_convert_never_write_over_their_inputs(tmp_path, dataset):
    root = copy_dataset(dataset, tmp_path)
    folder = str(tmp_path / "model")
    make_random_weights(folder, **SMALL)
    before = snapshot(root)
    code, _, err = run_script("eval", "--model", folder, "--root", root, "--is-wav",
                              "--out-dir", root)
    assert code == 1 and "would replace the dataset's" in the_error(err), err
    assert snapshot(root) == before
    fixture = os.path.join(ROOT, "tests", "fixtures", "openunmix_small")
    src = str(tmp_path / "pth")
    shutil.copytree(fixture, src)
    before = snapshot(src)
    code, _, err = run_script("convert", "--from-pytorch", src, "--out", src)
    assert code == 1 and "would replace the checkpoint file" in the_error(err), err
    assert snapshot(src) == before


def test_the_demo_removes_only_a_previous_demos_outputs(tmp_path):
    from unmix_nnabla.base.runtime import UmxError
    from tools.demo import start_afresh
    demo = tmp_path / "demo_out"
    (demo / "eval-baseline").mkdir(parents=True)
    (demo / "train-vocals" / "vocals.h5").parent.mkdir()
    (demo / "train-vocals" / "vocals.h5").write_text("weights")
    start_afresh(str(demo))
    assert not demo.exists()
    start_afresh(str(demo))  # nothing there: nothing to do
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UmxError, match="thesis.tex"):
        start_afresh(str(mine))
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "data").is_dir()


def test_overlap_rules():
    from unmix_nnabla.base.files import refuse_overlaps
    from unmix_nnabla.base.runtime import UmxError
    refuse_overlaps([("/x/in.wav", "in")], [("/x/out/a.wav", "one"), ("/x/out/b.wav", "one")])
    with pytest.raises(UmxError, match="would replace in /x/in.wav"):
        refuse_overlaps([("/x/in.wav", "in")], [("/x/../x/in.wav", "one")])
    with pytest.raises(UmxError, match="one and two would both write"):
        refuse_overlaps([], [("/x/a.wav", "one"), ("/x/a.wav", "two")])


# --------------------------------------------------------------------------------------
# 3. every argument checked before work (8: convert.py and data.py too)
# --------------------------------------------------------------------------------------

def test_arguments_are_checked_before_any_work(tmp_path, dataset):
    wav = str(tmp_path / "in.wav")
    sf.write(wav, music_like(0.5, 8000), 8000)
    blocker = str(tmp_path / "a_file")
    open(blocker, "w").close()
    model = str(tmp_path / "model")
    make_random_weights(model, **SMALL)
    out = str(tmp_path / "out")
    sep = ["--inputs", wav, "--model", model, "--out-dir", out]
    tr = ["--root", dataset, "--output", out] + TINY_TRAIN
    ev = ["--model", model, "--root", dataset, "--is-wav", "--out-dir", out]
    cases = [
        ("test", sep + ["--start", "-1"], "--start: must be >= 0"),
        ("test", sep + ["--duration", "0"], "--duration: must be > 0"),
        ("test", sep + ["--sample-rate", "0"], "--sample-rate: must be >= 1000"),
        ("test", sep + ["--sample-rate", "-44100"], "--sample-rate: must be >= 1000"),
        ("test", sep + ["--niter", "-1"], "--niter: must be >= 0"),
        ("test", sep + ["--alpha", "0"], "--alpha: must be > 0"),
        ("test", sep + ["--alpha", "nan"], "--alpha: expected a finite number"),
        ("test", sep + ["--chunk-dur", "-2"], "--chunk-dur: must be > 0"),
        ("test", ["--inputs", str(tmp_path), "--model", model, "--out-dir", out],
         "--inputs: %s is a folder, not a file" % tmp_path),
        ("test", sep[:-1] + [blocker], "--outdir: %s is a file, not a folder" % blocker),
        ("train", tr + ["--batch-size", "0"], "--batch-size: must be > 0"),
        ("train", tr + ["--epochs", "-3"], "--epochs: must be > 0"),
        ("train", tr + ["--hidden-size", "0"], "--hidden-size: must be > 0"),
        ("train", tr + ["--hidden-size", "15"], "--hidden-size: must be even"),
        ("train", tr + ["--lr", "0"], "--lr: must be > 0"),
        ("train", tr + ["--lr-decay-gamma", "1.5"], "--lr-decay-gamma: must be <= 1.0"),
        ("train", tr + ["--nhop", "1024"], "--nhop: must not exceed --nfft"),
        ("train", tr + ["--seed", "-1"], "--seed: must be >= 0"),
        ("train", tr + ["--nb-workers", "x"], "--nb-workers: expected an integer"),
        ("train", ["--root", blocker, "--output", out], "--root: %s is a file" % blocker),
        ("eval", ev + ["--cores", "0"], "--cores: must be > 0"),
        ("eval", ev + ["--tracks", "A", "A"], "--tracks: 'A' is given more than once"),
        ("eval", ev + ["--estimates", dataset], "--model and --estimates exclude each other"),
        ("convert", ["--from-pytorch", blocker, "--out", out], "--from-pytorch: %s is a file"
         % blocker),
        ("convert", ["--from-pytorch", str(tmp_path), "--out", blocker], "--out: %s is a file"
         % blocker),
        ("data", ["--generate", blocker], "--generate: %s is a file, not a folder" % blocker),
        ("data", ["--generate", out, "--duration", "0"], "--duration: must be >= 0.5"),
        ("data", ["--generate", out, "--nb-train", "0"], "--nb-train: must be > 0"),
    ]
    before = snapshot(str(tmp_path))
    for script, argv, message in cases:
        code, _, err = run_script(script, *argv)
        assert code == 2, (script, argv, err)
        line = the_error(err)
        assert message in line and "(see %s.py --help)" % script in line, (script, argv, err)
        assert snapshot(str(tmp_path)) == before and not os.path.exists(out), (script, argv)


# --------------------------------------------------------------------------------------
# 4. training data validated before the first step
# --------------------------------------------------------------------------------------

def _rewrite(path, transform, rate=None):
    audio, file_rate = sf.read(path, dtype="float32", always_2d=True)
    sf.write(path, transform(audio), rate or file_rate, subtype="FLOAT")


def test_bad_training_data_is_named_before_training(tmp_path, dataset):
    track = os.path.join("train", "Synth 01")
    cases = [
        ("vocals.wav", lambda a: a[::2], 22050, "is at 22050 Hz, but"),
        ("bass.wav", lambda a: a[:-100], None, "has 88100 samples, but"),
        ("drums.wav", lambda a: np.concatenate([a, a[:, :1]], axis=1), None, "has 3 channels"),
        ("other.wav", lambda a: np.where(np.arange(len(a))[:, None] == 500, np.nan, a), None,
         "holds NaN or infinite samples"),
        ("mixture.wav", None, None, "cannot read"),
    ]
    for k, (name, transform, rate, message) in enumerate(cases):
        root = copy_dataset(dataset, tmp_path, "data%d" % k)
        path = os.path.join(root, track, name)
        if transform is None:
            with open(path, "r+b") as f:
                f.write(b"garbage!" * 8)
        else:
            _rewrite(path, transform, rate)
        out = str(tmp_path / ("out%d" % k))
        code, _, err = run_script("train", "--root", root, "--output", out, *TINY_TRAIN)
        assert code == 1, (name, err)
        line = the_error(err)
        assert message in line and os.path.join(track, name) in line, (name, err)
        assert not os.path.exists(out), name  # nothing written before the checks pass


def test_a_track_at_another_rate_is_named(tmp_path, dataset):
    root = copy_dataset(dataset, tmp_path)
    folder = os.path.join(root, "train", "Synth 02")
    for name in list(SOURCES) + ["mixture"]:
        _rewrite(os.path.join(folder, name + ".wav"), lambda a: a[::2], 22050)
    code, _, err = run_script("train", "--root", root, "--output", str(tmp_path / "o"),
                              *TINY_TRAIN)
    assert code == 1 and "Synth 02" in the_error(err) and "22050 Hz" in the_error(err), err


def test_mono_stems_are_duplicated_and_said_so(tmp_path, dataset):
    """The one documented conversion of training data: a mono file feeds both channels."""
    root = copy_dataset(dataset, tmp_path)
    path = os.path.join(root, "train", "Synth 00", "vocals.wav")
    _rewrite(path, lambda a: a[:, :1])
    from unmix_nnabla.data.tracks import load_tracks
    track = [t for t in load_tracks(root, True) if t.name == "Synth 00"][0]
    stereo = track.read("vocals")
    assert stereo.shape[1] == 2 and np.array_equal(stereo[:, 0], stereo[:, 1])
    code, out, err = run_script("train", "--root", root, "--output", str(tmp_path / "o"),
                                *TINY_TRAIN)
    assert code == 0, err
    assert "1 mono files are used as stereo" in out


def test_a_nan_loss_names_the_tracks_and_the_weights(tmp_path, dataset):
    from unmix_nnabla.training import run as train_run
    from unmix_nnabla.data.datasets import MusdbSamples
    from unmix_nnabla.data.tracks import load_tracks
    tracks = load_tracks(dataset, True, "train")
    ds = MusdbSamples(tracks, "bass", seq_dur=0.5, samples_per_track=2, seed=1)
    weights = str(tmp_path / "bass.h5")
    line = train_run.nan_message("training", float("nan"), 3, ds, [0, 5], weights)
    names = {t.name for i in (0, 5) for _, _, t, _, _ in ds.draws(3, i)[0]}
    assert line.startswith("training loss is nan at epoch 3 (batch from tracks ")
    assert all("'%s'" % n in line for n in names) and "no weights were saved yet" in line
    open(weights, "w").close()
    line = train_run.nan_message("training", float("inf"), 3, ds, [0], weights)
    assert "the best weights so far are in %s" % weights in line


# --------------------------------------------------------------------------------------
# 5. checkpoints verified before they are trusted
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trained") / "out")
    code, _, err = run_script("train", "--root", dataset, "--output", out, *TINY_TRAIN)
    assert code == 0, err
    return out


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(path):
    with open(path, "w") as f:
        f.write("{not json")


@pytest.mark.parametrize("damage,file,message", [
    (_flip_byte, "parameters.h5", "is damaged (parameters.h5 does not match its checksum)"),
    (_truncate, "solver.h5", "is damaged (solver.h5 does not match its checksum)"),
    (_garble, "state.json", "is damaged (state.json does not match its checksum)"),
    (os.remove, "MANIFEST.json", "is incomplete (no MANIFEST.json"),
    (os.remove, "solver.h5", "is incomplete (solver.h5 is missing)"),
    (_garble, "MANIFEST.json", "is damaged (unreadable MANIFEST.json)"),
])
def test_damaged_checkpoints_are_refused(trained, tmp_path, dataset, damage, file, message):
    out = str(tmp_path / "out")
    shutil.copytree(trained, out)
    damage(os.path.join(out, "bass.checkpoint", file))
    before = snapshot(out)
    code, _, err = run_script("train", "--root", dataset, "--output", out,
                              *TINY_TRAIN[:-1], "2")
    assert code == 1, err
    line = the_error(err)
    assert message in line and "delete it to start over" in line, err
    assert snapshot(out) == before


@pytest.mark.parametrize("flags,message", [
    (["--hidden-size", "8"], "hidden_size = 16 (--hidden-size), this run asks for 8"),
    (["--nfft", "256"], "n_fft = 512 (--nfft), this run asks for 256"),
    (["--nb-channels", "1"], "nb_channels = 2 (--nb-channels), this run asks for 1"),
    (["--unidirectional"], "unidirectional = False (--unidirectional)"),
])
def test_resuming_another_model_is_refused(trained, tmp_path, dataset, flags, message):
    out = str(tmp_path / "out")
    shutil.copytree(trained, out)
    before = snapshot(out)
    args = [a for a in TINY_TRAIN]
    for flag in flags[::2]:
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    code, _, err = run_script("train", "--root", dataset, "--output", out, *args, *flags)
    assert code == 1 and message in the_error(err), err
    assert snapshot(out) == before


def test_finished_weights_without_checkpoint_are_kept(trained, tmp_path, dataset):
    out = str(tmp_path / "out")
    shutil.copytree(trained, out)
    shutil.rmtree(os.path.join(out, "bass.checkpoint"))
    before = snapshot(out)
    code, _, err = run_script("train", "--root", dataset, "--output", out, *TINY_TRAIN)
    assert code == 1 and "holds %s but no checkpoint" % os.path.join(out, "bass.h5") in \
        the_error(err), err
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------
# 6. evaluation scores only what it was given
# --------------------------------------------------------------------------------------

def test_mismatched_estimates_are_not_scored(tmp_path, dataset):
    cases = [
        (lambda a: a[:-100], None, "has 88100 samples x 2 channels, the reference 88200 x 2"),
        (lambda a: a[::2], 22050, "is at 22050 Hz, the reference at 44100 Hz"),
        (lambda a: a[:, :1], None, "has 88200 samples x 1 channels"),
        (lambda a: np.where(np.arange(len(a))[:, None] == 9, np.inf, a), None,
         "holds NaN or infinite samples"),
    ]
    for k, (transform, rate, message) in enumerate(cases):
        estimates = copy_dataset(dataset, tmp_path, "est%d" % k)
        bad = os.path.join(estimates, "test", "Synth Test 01", "drums.wav")
        _rewrite(bad, transform, rate)
        out = str(tmp_path / ("out%d" % k))
        # the first case beside a good track (museval takes ~10 s a track), the others alone
        tracks = [] if k == 0 else ["--tracks", "Synth Test 01"]
        code, stdout, err = run_script("eval", "--estimates", estimates, "--root", dataset,
                                       "--is-wav", "--out-dir", out, *tracks)
        assert code == 1, err
        assert "track 'Synth Test 01' not scored: %s %s" % (bad, message) in err, err
        if k == 0:
            assert "1 of 2 tracks could not be scored" in the_error(err)
            assert os.listdir(os.path.join(out, "test")) == ["Synth Test 00.json"]
            assert "Not scored (1): Synth Test 01" in open(os.path.join(out, "results.md")).read()
        else:
            assert "no track could be scored (1 failed)" in the_error(err)
            assert not os.path.exists(out)


def test_unscored_frames_are_counted_in_the_table(tmp_path, dataset):
    root = copy_dataset(dataset, tmp_path)
    for track in os.listdir(os.path.join(root, "test")):
        folder = os.path.join(root, "test", track)
        _rewrite(os.path.join(folder, "vocals.wav"), lambda a: np.where(
            np.arange(len(a))[:, None] < 44100 + 22050, 0, a))  # silent vocals for 1.5 s
        stems = [sf.read(os.path.join(folder, s + ".wav"), dtype="float32")[0] for s in SOURCES]
        sf.write(os.path.join(folder, "mixture.wav"), sum(stems), 44100, subtype="FLOAT")
    out = str(tmp_path / "out")
    code, stdout, err = run_script("eval", "--estimates", root, "--root", root, "--is-wav",
                                   "--out-dir", out)
    assert code == 0, err
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip()
            for line in stdout.splitlines() if line.startswith("| ") and "target" not in line}
    import json
    counts = {}
    for name in os.listdir(os.path.join(out, "test")):
        with open(os.path.join(out, "test", name)) as f:
            for target in json.load(f)["targets"]:
                sdr = [frame["metrics"]["SDR"] for frame in target["frames"]]
                nan, total = counts.get(target["name"], (0, 0))
                counts[target["name"]] = (nan + sum(v is None or v != v for v in sdr),
                                          total + len(sdr))
    assert counts["vocals"][0] > 0  # the silent vocals give frames without a score
    for target in SOURCES:
        assert rows[target] == "%d of %d" % counts[target]


# --------------------------------------------------------------------------------------
# 7. a full disk anywhere: one line naming the folder, nothing half-written
# --------------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """mount(size) → a folder on a tmpfs of `size` bytes (root only), unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mounted = []

    def mount(size):
        folder = str(tmp_path / ("disk%d" % len(mounted)))
        os.makedirs(folder)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", folder],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip("cannot mount a tmpfs here: %s" % proc.stderr.strip())
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", folder])


def _twice(script, *argv, env=None):
    """Run twice: the same one-line error both times (deterministic)."""
    lines = []
    for _ in range(2):
        code, _, err = run_script(script, *argv, env=env)
        assert code == 1, err
        lines.append(the_error(err))
    assert lines[0] == lines[1]
    return lines[0]


def test_full_out_dir(tiny_disk, tmp_path):
    disk = tiny_disk(1 << 20)
    folder = str(tmp_path / "model")
    make_random_weights(folder, **SMALL)
    wav = str(tmp_path / "in.wav")
    sf.write(wav, music_like(12.0, 8000), 8000)  # 4 stems x 12 s: 1.5 MB of float WAV
    out = os.path.join(disk, "out")
    line = _twice("test", "--inputs", wav, "--model", folder, "--out-dir", out)
    assert line == "error: no space left on the device of %s" % out
    assert os.listdir(disk) == []  # no stems, no staging, no out-dir


def test_full_tmpdir(tiny_disk, tmp_path):
    disk = tiny_disk(256 << 10)
    folder = str(tmp_path / "model")
    make_random_weights(folder, **SMALL)
    wav = str(tmp_path / "in.wav")
    sf.write(wav, music_like(12.0, 8000), 8000)  # decoded: 0.77 MB in TMPDIR
    line = _twice("test", "--inputs", wav, "--model", folder, "--out-dir", str(tmp_path / "out"),
                  env={"TMPDIR": disk})
    assert line == "error: no space left on the device of %s" % disk
    assert os.listdir(disk) == [] and not os.path.exists(str(tmp_path / "out"))


def test_full_training_output(tiny_disk, dataset):
    disk = tiny_disk(64 << 10)
    out = os.path.join(disk, "out")
    line = _twice("train", "--root", dataset, "--output", out, *TINY_TRAIN)
    assert line == "error: no space left on the device of %s" % out
    assert not staging_left(disk)


def test_full_convert_eval_and_generate_outputs(tiny_disk, tmp_path, dataset, stem_clip):
    disk = tiny_disk(32 << 10)
    fixture = os.path.join(ROOT, "tests", "fixtures", "openunmix_small")
    out = os.path.join(disk, "converted")
    assert _twice("convert", "--from-pytorch", fixture, "--out", out) == \
        "error: no space left on the device of %s" % out
    assert os.listdir(disk) == []
    out = os.path.join(disk, "scores")
    line = _twice("eval", "--estimates", dataset, "--root", dataset, "--is-wav", "--out-dir", out)
    assert line.startswith("error: no space left on the device of %s" % out)
    assert not staging_left(disk)
    out = os.path.join(disk, "generated")
    line = _twice("data", "--generate", out, "--nb-train", "2", "--nb-test", "0",
                  "--duration", "2")
    assert line.startswith("error: no space left on the device of %s" % out)
    assert not staging_left(disk)
    stems = str(tmp_path / "stems")
    os.makedirs(os.path.join(stems, "train"))
    shutil.copyfile(stem_clip, os.path.join(stems, "train", "Clip.stem.mp4"))
    out = os.path.join(disk, "decoded")
    line = _twice("data", "--decode-stems", stems, out)
    assert line.startswith("error: no space left on the device of %s" % out), line
    assert not os.path.exists(out)  # no empty OUT/train left


# --------------------------------------------------------------------------------------
# 9. one writer per output folder
# --------------------------------------------------------------------------------------

def lock_holder(folder):
    """The pid holding the flock of `folder` (from /proc/locks), or None."""
    stat = os.stat(folder)
    device = "%02x:%02x:%d" % (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "FLOCK" in fields and fields[5] == device:
                return int(fields[4])
    return None


@pytest.mark.slow
def test_a_second_run_into_a_folder_stops_at_once(tmp_path, dataset, stem_clip):
    out = str(tmp_path / "out")
    epochs = TINY_TRAIN.index("--epochs") + 1
    holder = start("train", "--root", dataset, "--output", out, *TINY_TRAIN[:epochs], "100000")
    wait_for(lambda: os.path.isdir(out) and lock_holder(out) == holder.pid)
    small = str(tmp_path / "small")
    make_random_weights(small, **SMALL)
    short = str(tmp_path / "short.wav")
    sf.write(short, music_like(1.0, 8000), 8000)
    stems = str(tmp_path / "stems")
    os.makedirs(os.path.join(stems, "train"))
    shutil.copyfile(stem_clip, os.path.join(stems, "train", "Clip.stem.mp4"))
    fixture = os.path.join(ROOT, "tests", "fixtures", "openunmix_small")
    cases = [("train", ["--root", dataset, "--output", out] + TINY_TRAIN),
             ("test", ["--inputs", short, "--model", small, "--out-dir", out]),
             ("eval", ["--estimates", dataset, "--root", dataset, "--is-wav", "--out-dir", out,
                       "--targets", "vocals", "drums"]),
             ("convert", ["--from-pytorch", fixture, "--out", out]),
             ("data", ["--decode-stems", stems, out])]
    try:
        for script, argv in cases:
            code, _, err = run_script(script, *argv)
            line = the_error(err)
            assert code == 1 and "is being written by another run (pid %d: " % holder.pid in line \
                and "train.py" in line, (script, err)
        assert holder.poll() is None  # the first run goes on
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    # a killed run's lock is gone with it: the next run writes into the folder
    assert lock_holder(out) is None
    code, _, err = run_script("test", "--inputs", short, "--model", small, "--out-dir", out,
                              "--niter", "0")
    assert code == 0, err


# --------------------------------------------------------------------------------------
# 10. Ctrl-C and SIGTERM arrive between NNabla's passes
# --------------------------------------------------------------------------------------

def _signal_during(cls, method, signum):
    """cls.method, sending `signum` to this process at its first call (then as it was)."""
    original = getattr(cls, method)
    sent = []

    def patched(self, *args):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(self, *args)
    return patched


@pytest.fixture
def cli_handlers():
    """The handlers run_cli installs (SIGTERM → Interrupted), restored afterwards."""
    from unmix_nnabla.base.runtime import _raise_interrupted
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_signal_inside_an_nnabla_pass_arrives_after_it(cli_handlers):
    import nnabla as nn
    from unmix_nnabla.networks.ops import NumpyFunction
    from unmix_nnabla.base.runtime import Interrupted, signals_deferred

    class _Twice(NumpyFunction):
        """2 x, sending `signum` to this process inside the pass named `during`."""

        def forward_impl(self, inputs, outputs):
            if self.during == "forward":
                os.kill(os.getpid(), self.signum)
            outputs[0].data.get_data("w")[...] = 2 * inputs[0].data.get_data("r")

        def backward_impl(self, inputs, outputs, propagate_down, accum):
            if self.during == "backward":
                os.kill(os.getpid(), self.signum)
            inputs[0].grad.get_data("w")[...] = 2 * outputs[0].grad.get_data("r")

    x = nn.Variable.from_numpy_array(np.arange(3, dtype=np.float32), need_grad=True)
    for signum, expected in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Interrupted)):
        for during in ("forward", "backward"):
            y = _Twice(during=during, signum=signum)(x)
            if during == "backward":
                y.forward()
            with pytest.raises(expected):
                with signals_deferred():
                    y.forward() if during == "forward" else y.backward(clear_buffer=True)
            assert np.array_equal(y.d, 2 * x.d)  # the pass completed first
            if during == "backward":
                assert np.array_equal(x.g, np.full(3, 2.0, np.float32))
        # the mechanism matters: raised inside NNabla's call, the signal is a SystemError
        with pytest.raises(SystemError):
            _Twice(during="forward", signum=signum)(x).forward()


def _tiny_step(xumx):
    """A tiny UMX or X-UMX training graph and solver, and a batch for it."""
    import nnabla as nn
    import nnabla.solvers as S
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
    from unmix_nnabla.training import graph as train_graph
    cfg = UmxConfig(**dict(SMALL, xumx_branches=XUMX_BRANCHES if xumx else ()))
    scope = "x-umx" if xumx else "vocals"
    nn.clear_parameters()
    graph = train_graph.build_training_graph(cfg, scope, 2, 4000)
    solver = S.Adam(alpha=1e-3)
    with nn.parameter_scope(scope):
        solver.set_parameters(nn.get_parameters())
    rng = np.random.RandomState(0)
    mixtures = rng.randn(2, 4000, 2).astype(np.float32) * 0.1
    targets = np.tile(mixtures * 0.25, (1, 1, 4 if xumx else 1))
    return cfg, graph, solver, mixtures, targets


@pytest.mark.parametrize("xumx", [False, True])
@pytest.mark.parametrize("phase", ["forward", "backward", "loss", "update"])
def test_a_signal_during_a_training_step_ends_it_cleanly(xumx, phase, cli_handlers,
                                                         monkeypatch):
    from unmix_nnabla.networks import ops
    from unmix_nnabla.training import loss
    from unmix_nnabla.base.runtime import Interrupted
    from unmix_nnabla.training import step as training_step
    cfg, graph, solver, mixtures, targets = _tiny_step(xumx)
    signum, expected = ((signal.SIGTERM, Interrupted) if xumx else
                        (signal.SIGINT, KeyboardInterrupt))
    where = {"forward": (ops._Dense, "forward_impl"), "backward": (ops._Dense, "backward_impl"),
             "loss": (loss._TimeLoss if xumx else loss._MeanSquaredError, "forward_impl"),
             "update": None}[phase]
    if phase == "update":  # a solver is no Python function: NNabla returns before the signal
        solver = _SignalingSolver(solver, signum)
    else:
        monkeypatch.setattr(*where, _signal_during(*where, signum))
    with pytest.raises(expected):
        training_step.train_step(graph, solver, mixtures, targets, cfg, 1e-5,
                                training_step.dropout_rngs(0, 1, range(2)))


class _SignalingSolver:
    """A solver that sends `signum` to this process as it updates."""

    def __init__(self, solver, signum):
        self.solver, self.signum = solver, signum

    def __getattr__(self, name):
        return getattr(self.solver, name)

    def update(self):
        os.kill(os.getpid(), self.signum)
        self.solver.update()


def test_a_signal_during_validation_ends_it_cleanly(cli_handlers, monkeypatch, dataset):
    import nnabla as nn
    from unmix_nnabla.networks import ops
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.cli.args import get_train_args
    from unmix_nnabla.data.datasets import data_config
    from unmix_nnabla.data.datasets import load_dataset
    from unmix_nnabla.training import graph as train_graph, step as training_step
    cfg = UmxConfig(hidden_size=16, max_bin=100, nb_output_bins=257, n_fft=512, n_hop=128)
    args = get_train_args(["--root", dataset] + TINY_TRAIN)
    data = load_dataset(data_config(args), log=lambda *a: None)
    nn.clear_parameters()
    train_graph.build_training_graph(cfg, "bass", 2, 22050)
    where = (ops._LstmRecurrence, "forward_impl")  # inside the inference network's pass
    monkeypatch.setattr(*where, _signal_during(*where, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        training_step.validation_loss(data, "bass", cfg, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("xumx,signum", [(False, signal.SIGINT), (True, signal.SIGTERM)])
def test_train_py_interrupted_mid_epoch_ends_cleanly_and_resumes(tmp_path, dataset, xumx,
                                                                 signum):
    out = str(tmp_path / "out")
    if xumx:
        argv = ["--root", dataset, "--is-wav", "--output", out, "--batch-size", "2",
                "--hidden-size", "8", "--nfft", "512", "--nhop", "128", "--samples-per-track",
                "4", "--seq-dur", "0.5", "--context", "cpu", "--epochs", "3"]
        name = "x-umx"
    else:
        argv = ["--root", dataset, "--output", out] + TINY_TRAIN[:-1] + ["3"]
        argv[argv.index("--samples-per-track") + 1] = "8"
        name = "bass"
    proc = start("train", *argv)
    wait_for(lambda: os.path.isfile(os.path.join(out, name + ".checkpoint", "MANIFEST.json")))
    time.sleep(0.3)  # into the second epoch's steps
    os.kill(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    line = the_error(stderr, "interrupted")
    assert proc.returncode == 128 + signum, stderr
    assert ("Ctrl-C" if signum == signal.SIGINT else "SIGTERM") in line
    assert not staging_left(out)
    code, stdout, err = run_script("train", *argv)
    assert code == 0 and "resuming %s from epoch" % name in stdout, err


# --------------------------------------------------------------------------------------
# 11. scores are tied to what made them
# --------------------------------------------------------------------------------------

def test_scores_of_another_model_or_options_are_never_reported(tmp_path, dataset):
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        models[name] = str(tmp_path / name)
        make_random_weights(models[name], seed=seed, **SMALL)
    out = str(tmp_path / "out")
    base = ["--root", dataset, "--is-wav", "--out-dir", out, "--context", "cpu"]
    code, _, err = run_script("eval", "--model", models["a"], *base)
    assert code == 0, err
    before = snapshot(out)
    cases = [(["--model", models["b"]], "was scored with other model files"),
             (["--model", models["a"], "--niter", "0"], "was scored with other options"),
             (["--estimates", dataset], "was scored with other model files")]
    for argv, message in cases:
        code, _, err = run_script("eval", *argv, *(base[:-2] if "--estimates" in argv else base))
        assert code == 1 and message in the_error(err), (argv, err)
        assert snapshot(out) == before, argv
    code, stdout, err = run_script("eval", "--model", models["a"], *base)
    assert code == 0 and "2 of 2 tracks already scored with this model" in stdout, err
    # scores without a record (an older version's): refused, not taken on trust
    shutil.rmtree(os.path.join(out, ".scored-with"))
    code, _, err = run_script("eval", "--model", models["a"], *base)
    assert code == 1 and "has no record of what made it" in the_error(err), err


def test_changed_estimates_are_scored_again_only_in_a_new_folder(tmp_path, dataset):
    estimates = copy_dataset(dataset, tmp_path, "estimates")
    out = str(tmp_path / "out")
    argv = ["--estimates", estimates, "--root", dataset, "--is-wav", "--out-dir", out,
            "--targets", "vocals", "drums"]
    code, _, err = run_script("eval", *argv)
    assert code == 0, err
    path = os.path.join(estimates, "test", "Synth Test 00", "vocals.wav")
    _rewrite(path, lambda a: a * 0.5)
    code, _, err = run_script("eval", *argv)
    assert code == 1 and "other estimate files" in the_error(err), err
    assert "vocals.wav" in the_error(err)


# --------------------------------------------------------------------------------------
# 12. nothing left behind
# --------------------------------------------------------------------------------------

def test_eval_with_workers_leaves_no_temporary_folder(tmp_path, dataset):
    tmpdir = str(tmp_path / "tmp")
    os.makedirs(tmpdir)
    for k, kill_after in enumerate((None, 2.5)):
        out = str(tmp_path / ("out%d" % k))
        argv = ["--estimates", dataset, "--root", dataset, "--is-wav", "--out-dir", out,
                "--cores", "2", "--targets", "vocals", "drums"]
        if kill_after is None:
            code, _, err = run_script("eval", *argv, env={"TMPDIR": tmpdir})
            assert code == 0, err
        else:
            proc = start("eval", *argv, env={"TMPDIR": tmpdir})
            time.sleep(kill_after)
            os.kill(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode in (0, 143), err
            assert "Traceback" not in err, err
        assert os.listdir(tmpdir) == [], k


def test_arguments_that_need_no_data_are_checked_first(tmp_path, dataset):
    out = str(tmp_path / "out")
    code, _, err = run_script("train", "--root", dataset, "--is-wav", "--output", out,
                              "--seq-dur", "0.02", "--context", "cpu")
    assert code == 1 and "--seq-dur is too short for X-UMX" in the_error(err), err
    assert not os.path.exists(out)  # no data-check.json in a folder the run created
    inside = os.path.join(dataset, "train", "models")
    code, _, err = run_script("train", "--root", dataset, "--output", inside, *TINY_TRAIN)
    assert code == 1 and "is inside the dataset's train" in the_error(err), err
    assert not os.path.exists(inside)


def test_a_failed_preview_download_leaves_no_folder(tmp_path):
    home = str(tmp_path / "home")
    os.makedirs(home)
    code, _, err = run_script("train", "--umx-train", "--output", str(tmp_path / "out"),
                              "--context", "cpu", env={"HOME": home, "https_proxy": "http://127.0.0.1:9",
                                                       "http_proxy": "http://127.0.0.1:9"})
    assert code == 1 and "could not download the MUSDB18 previews" in the_error(err), err
    assert os.listdir(home) == [] and not os.path.exists(str(tmp_path / "out"))


# --------------------------------------------------------------------------------------
# staging left by a run killed at any moment, and locks a forked worker must not keep
# --------------------------------------------------------------------------------------

def _killed_while_creating_staging(folder):
    """A process killed between creating a staging folder and locking it (its flock made to
    wait forever): the entry it leaves, after it is gone."""
    code = ("import sys, time\n"
            "from unmix_nnabla.base import files\n"
            "files.fcntl = type('F', (), {'flock': staticmethod(lambda *a: time.sleep(600)),"
            " 'LOCK_EX': 0})\n"
            "files._new_staging(sys.argv[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", code, folder], cwd=ROOT)
    left = wait_for(lambda: [n for n in os.listdir(folder) if n.startswith(".tmp-umx-new-")])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return left


def test_a_staging_whose_creator_died_before_locking_it_is_removed_by_the_next(tmp_path):
    from unmix_nnabla.base.files import _HOST, remove_stale_staging
    folder = str(tmp_path)
    left = _killed_while_creating_staging(folder)
    assert len(left) == 1
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: open("/proc/%d/stat" % zombie.pid).read().rpartition(")")[2].split()[0]
             == "Z")
    kept = [".tmp-umx-new-%d@%s-abcdefgh" % (os.getpid(), _HOST),  # its creator lives
            ".tmp-umx-new-%d@another-host-abcdefgh" % zombie.pid,  # another host's
            ".tmp-umx-new-abcdefgh"]  # no creator named
    for name in kept + [".tmp-umx-new-%d@%s-zzzzzzzz" % (zombie.pid, _HOST)]:
        os.makedirs(os.path.join(folder, name))
    remove_stale_staging(folder)
    zombie.wait()
    assert sorted(os.listdir(folder)) == sorted(kept)


def _parent_locks_in_child(paths):
    """In a forked worker: the descriptors open here on the parent's locked folders, and the
    locks the files module believes it holds."""
    from unmix_nnabla.base import files
    still_open = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd) in paths:
                still_open.append(fd)
        except OSError:
            pass
    return still_open, dict(files._LOCKS), dict(files._HELD)


def test_forked_workers_do_not_keep_the_parents_locks(tmp_path):
    """A flock belongs to the descriptor a fork shares: a worker that kept the parent's would
    hold its locks after the parent died. Here the worker holds none; and a run killed while
    its worker still runs leaves a staging folder the next run removes at once (a worker
    forked that very moment drops the descriptors as soon as it runs)."""
    from unmix_nnabla.base import files
    from unmix_nnabla.base.processes import worker_pool
    out = str(tmp_path / "out")
    os.makedirs(out)
    with files.locked_folder(out, "--out-dir"):
        staging = files._new_staging(out)
        paths = [os.path.realpath(staging), os.path.realpath(out)]
        assert len(_parent_locks_in_child(paths)[0]) == 2  # the parent's own
        with worker_pool(1) as pool:
            assert pool.submit(_parent_locks_in_child, paths).result() == ([], {}, {})
        files._release(staging)
    code = ("import sys, time\n"
            "from unmix_nnabla.base import files\n"
            "from unmix_nnabla.base.processes import worker_pool\n"
            "files._new_staging(sys.argv[1])\n"
            "with worker_pool(1) as pool:\n"
            "    pool.submit(int).result()  # the worker runs (past its fork)\n"
            "    job = pool.submit(time.sleep, 600)\n"
            "    print('working', flush=True)\n"
            "    job.result()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, out], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "working\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging_left(out)
    files.remove_stale_staging(out)
    assert staging_left(out) == []
