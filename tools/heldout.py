#!/usr/bin/env python3
"""Does pre-training beat random features on videos it never saw? The held-out protocol, one command.

  python tools/heldout.py my_videos/ --out runs/heldout                      # tiny, 3 seeds, every fold
  python tools/heldout.py my_videos/ --out runs/heldout --name lr3e-4 --set optim.base_lr=4.8e-3
  python tools/heldout.py my_videos/ --out runs/heldout --name peer --peer ~/src/CropMAE   # CropMAE's SiamMAE

The videos are split into folds (leave one video out when there are at most ``--max-folds`` videos, else
that many folds of consecutive videos in sorted order; ``--folds 0`` runs only fold 0, e.g. for a long
budget). For each fold:

1. its training videos are sharded (``siammae shard``: ``--per-video`` pairs a video, ``--gap``);
2. DAVIS-format sets are composited from its held-out videos only (``siammae synth davis --from-videos``),
   for every ``--variants`` x ``--set-seeds`` (the curve sets) and ``--final-variants`` (seed 0; scored at
   the last step only). With one held-out video, ``default`` objects can only come from that same video,
   so ``hard`` is the same set (made and scored once, reported under both names);
3. the recipe is trained once per ``--train-seeds`` seed with the real trainer (``--peer``: CropMAE's
   model instead of ours, same loop, optimiser and schedule), the encoder saved at every ``--eval-every``
   steps;
4. every saved encoder, a random encoder of the same architecture made with the same seed (what
   ``siammae propagate --random-init`` makes) and copying frame 0 in place are propagated on every set
   at short side ``--eval-size`` and scored with J&F.

The report (``OUT/report-NAME-PROTOCOL-SIZE.md``, ``.json``, ``curves-...png``) gives per fold and variant the
trained encoder's lead over the random one (trained - random, same seed, same set, J&F points) with
its mean, standard deviation and range over training seeds x set seeds; the random and copy scores;
token diagnostics; and the lead at every evaluated step. Everything is cached under OUT (shards and sets
per fold, runs per setting name): running again resumes, and ``--report-only`` redraws the report.
Several settings can share one OUT: they share its shards and sets, and their random baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from siammae.train.runfolder import samples_per_s  # noqa: E402

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- plan


def list_videos(videos_dir: Path) -> list:
    from siammae.synth.composite import find_sources

    return [s.path for s in find_sources(videos_dir)]


def make_folds(videos: list, max_folds: int) -> list:
    """[(train videos, held-out videos)]: leave one out for up to ``max_folds`` videos, else
    ``max_folds`` runs of consecutive videos (sorted order) held out in turn."""
    if len(videos) < 2:
        raise SystemExit("error: the held-out protocol needs at least 2 videos (one to train on, one to test on)")
    if max_folds < 2:  # one fold would hold out every video and train on none
        raise SystemExit(f"error: --max-folds {max_folds}: at least 2 folds (--folds 0 runs the first fold alone)")
    k = min(len(videos), max_folds)
    bounds = np.linspace(0, len(videos), k + 1).round().astype(int)
    folds = []
    for i in range(k):
        held = videos[bounds[i] : bounds[i + 1]]
        folds.append(([v for v in videos if v not in held], held))
    return folds


def link_videos(paths: list, folder: Path) -> Path:
    """A folder of symlinks to ``paths`` (what ``siammae shard`` and the compositor read)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        link = folder / Path(p).name
        if not link.exists():
            link.symlink_to(Path(p).resolve())
    return folder


def set_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def prepare_fold(args, k: int, train_videos: list, held: list) -> dict:
    """Shards of the training videos and the held-out sets of fold ``k`` (cached); -> paths."""
    from siammae.shard.run import ShardConfig, shard
    from siammae.shard.sampling import SampleSpec
    from siammae.synth.composite import composite_davis
    from siammae.tasks.davis import check_davis, copy_first_frame_jf

    fold = args.out / "folds" / f"fold{k}"
    # The cache is keyed by fold number: a fold made from another split would be reused silently.
    for videos, folder in ((train_videos, fold / "train_videos"), (held, fold / "heldout_videos")):
        made = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if made and made != {Path(v).name for v in videos}:
            raise SystemExit(
                f"error: {folder} holds {', '.join(sorted(made))}, not this split's "
                f"{', '.join(sorted(Path(v).name for v in videos))}: another --max-folds or video folder made "
                "this fold; use a new --out"
            )
    link_videos(train_videos, fold / "train_videos")
    link_videos(held, fold / "heldout_videos")
    if args.runs:  # runs of consecutive frames; the trainer draws each pair within --gap (data.pair_gap)
        shards = fold / f"shards-pv{args.per_video}-r{args.runs}"
        sample = SampleSpec(per_video=args.per_video, frames=args.runs, gap=(args.runs - 1, args.runs - 1))
    else:
        shards = fold / f"shards-pv{args.per_video}-g{args.gap[0]}-{args.gap[1]}"
        sample = SampleSpec(per_video=args.per_video, gap=tuple(args.gap))
    if not (shards / "stats.json").is_file():
        config = ShardConfig(sample=sample, max_samples=200)
        shard(fold / "train_videos", shards, config, workers=1, progress=False, log=lambda *_: None)
    sets, copy_path = {}, fold / "copy_first_frame.json"
    copy = json.loads(copy_path.read_text()) if copy_path.is_file() else {}
    wanted = [(v, s) for v in args.variants for s in args.set_seeds] + [(v, 0) for v in args.final_variants]
    for variant, seed in wanted:
        name = set_name(variant, seed)
        if variant == "hard" and len(held) == 1:  # objects can only come from the one held-out video
            variant = "default"
        root = fold / "sets" / set_name(variant, seed)
        if not (root / "composite.json").is_file():
            if root.exists():
                shutil.rmtree(root)
            composite_davis(
                fold / "heldout_videos",
                root,
                num_sequences=args.sequences,
                frames=args.frames,
                size=tuple(args.size),
                seed=seed,
                variant=variant,
            )
        sets[name] = root
        if name not in copy:
            copy[name] = copy_first_frame_jf(root, check_davis(root), fold / "copy_tmp")
            shutil.rmtree(fold / "copy_tmp")
    copy_path.write_text(json.dumps(copy, indent=1) + "\n")
    return dict(
        shards=str(shards),
        sets={k: str(v) for k, v in sets.items()},
        copy=copy,
        fold=k,
        train=[Path(v).name for v in train_videos],
        heldout=[Path(v).name for v in held],
    )


# ----------------------------------------------------------------------------- one job (a subprocess)


def training_config(job: dict):
    from siammae.config import load_config

    steps, batch = job["steps"], job["batch"]
    overrides = list(job["overrides"]) + [
        f"data.shards={job['shards']}",
        f"train.output_dir={job['run_dir']}",
        f"train.samples={steps * batch}",
        f"train.global_batch_size={batch}",
        f"train.seed={job['seed']}",
        f"train.save_every={job['eval_every']}",
        "train.keep_last=1",
        "train.recon_every=0",
        "train.log_with=none",
        "train.resume=auto",
        'train.mixed_precision="no"',
    ]
    return load_config(job["recipe"], overrides)


def encoder_weights(model) -> dict:
    """The frame encoder's state dict under timm ViT names (ours: ``model.encoder``; a peer says)."""
    own = getattr(model, "encoder_state_dict", None)
    sd = own() if own is not None else model.encoder.state_dict()
    return {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def save_encoder(sd: dict, path: Path) -> None:
    from safetensors.torch import save_file

    from siammae.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file(sd, str(tmp)))


def run_training(job: dict) -> None:
    """Train (resuming if a checkpoint is there), saving the encoder at step 0 and every eval step."""
    import torch
    from accelerate.utils import set_seed

    from siammae.models import build_model
    from siammae.train import train

    cfg = training_config(job)
    build = build_model
    if job.get("peer"):
        sys.path.insert(0, str(HERE.parent))
        from peer_cropmae import builder

        build = builder(job["peer"])
    encoders = Path(job["run_dir"]) / "encoders"
    if not (encoders / "step_0.safetensors").is_file():
        set_seed(cfg.train.seed)  # the trainer's own first draw: these are its initial weights
        save_encoder(encoder_weights(build(cfg)), encoders / "step_0.safetensors")

    def on_step(step, model, _keys, accelerator):
        if step % job["eval_every"] == 0 or step == job["steps"]:
            save_encoder(encoder_weights(accelerator.unwrap_model(model)), encoders / f"step_{step}.safetensors")

    started = time.time()
    summary = train(cfg, on_step=on_step, build=build)
    if summary["signal"]:  # stopped before the end: the checkpoint stays, the next run resumes from it
        raise SystemExit(128 + summary["signal"])
    summary["wall_s_this_session"] = round(time.time() - started, 1)
    (Path(job["run_dir"]) / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(Path(job["run_dir"]) / "checkpoints", ignore_errors=True)  # the encoders are what is kept
    del torch


def random_encoder(job: dict) -> dict:
    """What ``siammae propagate --random-init`` evaluates for this recipe, drawn with the job's seed."""
    import torch

    from siammae.models.common import build_encoder

    torch.manual_seed(job["seed"])
    return build_encoder(training_config(job).model).state_dict()


def evaluate_encoders(job: dict) -> None:
    """Score every saved encoder of the job on every set it should be scored on (cached in scores.json)."""
    import torch

    from siammae.encoders import EncoderInfo, create_vit
    from siammae.models.common import timm_spec
    from siammae.propagate.diagnostics import encoder_diagnostics
    from siammae.propagate.features import FeatureExtractor
    from siammae.propagate.protocol import choose_protocol
    from siammae.tasks.davis import check_davis, propagate
    from siammae.tasks.jandf import evaluate
    from siammae.weights import load_strict, read_weights

    cfg = training_config(job)
    info = EncoderInfo(timm_spec(cfg.model)[0], cfg.model.patch_size, cfg.model.img_size, "heldout")
    protocol = choose_protocol(job["protocol"], short_side=job["eval_size"], **job.get("knobs", {}))
    run_dir = Path(job["run_dir"])
    scores_path = run_dir / scores_file(job["eval_size"], job["protocol"], job.get("knobs", {}))
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    if job["random"]:
        steps = {"random": random_encoder(job)}
    else:
        files = {int(p.stem.split("_")[1]): p for p in (run_dir / "encoders").glob("step_*.safetensors")}
        steps = {str(s): files[s] for s in sorted(files)}
    last = str(max(int(s) for s in steps)) if not job["random"] else "random"
    for step, source in steps.items():
        wanted = list(job["curve_sets"]) + (list(job["final_sets"]) if step == last else [])
        todo = [s for s in wanted if s not in scores.get(step, {})]
        if not todo:
            continue
        sd = source if isinstance(source, dict) else read_weights(source)[0]
        vit = create_vit(info, dynamic=True)
        load_strict(vit, sd, f"encoder at step {step}")
        vit.eval()
        for name in todo:
            root = Path(job["sets"][name])
            same = next((n for n, e in scores.get(step, {}).items() if job["sets"].get(n) == str(root)), None)
            if same is not None:  # one set under two names (hard = default with one held-out video)
                scores[step][name] = scores[step][same]
                continue
            tmp = run_dir / "eval_tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            propagate(vit, root, tmp, protocol, progress=False)
            row = evaluate(root, tmp).global_row()
            entry = {"jf": row["J&F-Mean"], "j": row["J-Mean"], "f": row["F-Mean"]}
            if name == job["curve_sets"][0]:
                entry.update(
                    encoder_diagnostics(
                        FeatureExtractor(vit, protocol, torch.device("cpu")), [seq.frames for seq in check_davis(root)]
                    )
                )
            scores.setdefault(step, {})[name] = entry
            shutil.rmtree(tmp, ignore_errors=True)
            scores_path.write_text(json.dumps(scores, indent=1) + "\n")


def evaluation_key(eval_size: int, protocol: str, knobs: dict) -> str:
    """How a run was scored, as a file-name part: ``siammae-128``, ``siammae-128-topk10``."""
    return "-".join([protocol, str(eval_size), *(f"{k}{v}" for k, v in sorted(knobs.items()))])


def scores_file(eval_size: int, protocol: str, knobs: dict) -> str:
    return f"scores-{evaluation_key(eval_size, protocol, knobs)}.json"


def run_job(job: dict) -> None:
    import torch

    torch.set_num_threads(job["threads"])
    if not job["random"] and not (Path(job["run_dir"]) / "train_summary.json").is_file():
        run_training(job)
    evaluate_encoders(job)
    (Path(job["run_dir"]) / done_file(job)).write_text(json.dumps(job, indent=1) + "\n")


# ----------------------------------------------------------------------------- jobs in parallel


def done_file(job: dict) -> str:
    return "done-" + scores_file(job["eval_size"], job["protocol"], job.get("knobs", {}))


def job_done(job: dict) -> bool:
    done = Path(job["run_dir"]) / done_file(job)
    if not done.is_file():
        return False
    before = json.loads(done.read_text())
    return all(before.get(k) == job.get(k) for k in ("curve_sets", "final_sets", "steps", "eval_every", "overrides"))


def run_jobs(jobs: list, parallel: int, threads: int) -> None:
    """Each job in its own process (Accelerate's state is one per process), ``parallel`` at a time."""
    todo = [j for j in jobs if not job_done(j)]
    running = []
    print(
        f"{len(jobs) - len(todo)} of {len(jobs)} jobs already done; running {len(todo)}, {parallel} at a time",
        flush=True,
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    while todo or running:
        while todo and len(running) < parallel:
            job = todo.pop(0)
            Path(job["run_dir"]).mkdir(parents=True, exist_ok=True)
            log = open(Path(job["run_dir"]) / "job.log", "a")
            proc = subprocess.Popen(
                [sys.executable, str(HERE), "--job", json.dumps(job)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running.append((proc, job, log, time.time()))
            print(f"  started {job['label']}", flush=True)
        time.sleep(2)
        for item in list(running):
            proc, job, log, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                state = (
                    "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {job['run_dir']}/job.log)"
                )
                print(f"  {state}: {job['label']} in {(time.time() - t0) / 60:.1f} min", flush=True)


# ----------------------------------------------------------------------------- report


def spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return dict(
        mean=float(v.mean()),
        sd=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        min=float(v.min()),
        max=float(v.max()),
        n=int(len(v)),
    )


def fmt(s: dict) -> str:
    return f"{s['mean']:+.1f} ± {s['sd']:.1f} ({s['min']:+.1f}..{s['max']:+.1f})"


def summarise(args, prepared: list) -> dict:
    """Leads per fold, variant and step, in J&F points."""
    out = dict(
        name=args.name,
        recipe=args.recipe,
        overrides=args.set,
        peer=str(args.peer or ""),
        steps=args.steps,
        folds=[],
        eval_size=args.eval_size,
        protocol=args.protocol,
        knobs=args.knobs,
    )
    for fold in prepared:
        k = fold["fold"]
        entry = dict(fold=k, train=fold["train"], heldout=fold["heldout"], variants={}, curve={}, minutes=[])
        per_seed = {}
        for seed in args.train_seeds:
            run = args.out / "runs" / args.name / f"fold{k}" / f"seed{seed}"
            rnd = args.out / "runs" / random_key(args) / f"fold{k}" / f"seed{seed}"
            name = scores_file(args.eval_size, args.protocol, args.knobs)
            if not (run / name).is_file() or not (rnd / name).is_file():
                continue
            per_seed[seed] = (json.loads((run / name).read_text()), json.loads((rnd / name).read_text())["random"])
            summary = run / "train_summary.json"
            if summary.is_file():
                s = json.loads(summary.read_text())
                # from the speed, not the wall time: a resumed run's wall time counts its last session only
                entry["minutes"].append(round(args.steps * args.batch / max(samples_per_s(s), 1e-9) / 60, 2))
        if not per_seed:
            out["folds"].append(entry)
            continue
        last = str(args.steps)
        for variant in args.variants + args.final_variants:
            seeds = args.set_seeds if variant in args.variants else [0]
            leads, trained, random, init = [], [], [], []
            for scores, rnd in per_seed.values():
                for s in seeds:
                    name = set_name(variant, s)
                    if name in scores.get(last, {}) and name in rnd:
                        leads.append(100 * (scores[last][name]["jf"] - rnd[name]["jf"]))
                        trained.append(100 * scores[last][name]["jf"])
                        random.append(100 * rnd[name]["jf"])
                        if name in scores.get("0", {}):
                            init.append(100 * scores["0"][name]["jf"])
            if leads:
                copy = [100 * fold["copy"][set_name(variant, s)] for s in seeds]
                entry["variants"][variant] = dict(
                    lead=spread(leads),
                    trained=spread(trained),
                    random=spread(random),
                    step0=spread(init) if init else None,
                    copy=spread(copy),
                )
        steps = sorted({int(s) for scores, _ in per_seed.values() for s in scores})
        for step in steps:
            leads, diag = [], []
            for scores, rnd in per_seed.values():
                for variant in args.variants:
                    for s in args.set_seeds:
                        name = set_name(variant, s)
                        if name in scores.get(str(step), {}) and name in rnd:
                            leads.append(100 * (scores[str(step)][name]["jf"] - rnd[name]["jf"]))
                first = scores.get(str(step), {}).get(set_name(args.variants[0], args.set_seeds[0]), {})
                if "mean_cosine" in first:
                    diag.append((first["mean_cosine"], first["effective_rank"]))
            if leads:
                entry["curve"][step] = dict(
                    lead=spread(leads),
                    cosine=float(np.mean([d[0] for d in diag])) if diag else None,
                    rank=float(np.mean([d[1] for d in diag])) if diag else None,
                )
        out["folds"].append(entry)
    # Over folds: the mean of the fold means (each fold weighs the same), per variant.
    overall = {}
    for variant in args.variants + args.final_variants:
        means = [f["variants"][variant]["lead"]["mean"] for f in out["folds"] if variant in f.get("variants", {})]
        if means:
            overall[variant] = dict(
                mean_of_folds=float(np.mean(means)), worst_fold=float(np.min(means)), folds=len(means)
            )
    out["overall"] = overall
    return out


def report_markdown(summary: dict, args) -> str:
    lines = [
        f"# Held-out protocol: {summary['name']}",
        "",
        f"recipe `{summary['recipe']}`"
        + (f" with `{' '.join(summary['overrides'])}`" if summary["overrides"] else "")
        + (f"; peer model from `{summary['peer']}`" if summary["peer"] else "")
        + f"; {summary['steps']} steps; evaluated at short side {summary['eval_size']} "
        f"(`{summary['protocol']}` preset{''.join(f', {k}={v}' for k, v in summary['knobs'].items())}); "
        f"training seeds {','.join(map(str, args.train_seeds))}, set seeds {','.join(map(str, args.set_seeds))}.",
        "",
        "Lead = trained - random J&F (points), mean ± sd (min..max) over training seeds x set seeds; "
        "random = `--random-init` of the same seed; step 0 = the run's own initial weights; copy = frame 0 "
        "copied in place.",
        "",
    ]
    variants = args.variants + args.final_variants
    lines.append("| fold (held out) | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    for f in summary["folds"]:
        cells = [fmt(f["variants"][v]["lead"]) if v in f["variants"] else "" for v in variants]
        lines.append(f"| {f['fold']} ({', '.join(f['heldout'])}) | " + " | ".join(cells) + " |")
    o = summary["overall"]
    lines.append(
        "| mean of folds (worst fold) | "
        + " | ".join(f"{o[v]['mean_of_folds']:+.1f} ({o[v]['worst_fold']:+.1f})" if v in o else "" for v in variants)
        + " |"
    )
    lines += [
        "",
        "Absolute J&F: trained / random / step 0 / copy",
        "",
        "| fold | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for f in summary["folds"]:
        cells = []
        for v in variants:
            if v not in f["variants"]:
                cells.append("")
                continue
            e = f["variants"][v]
            step0 = f"{e['step0']['mean']:.1f}" if e["step0"] else "-"
            cells.append(f"{e['trained']['mean']:.1f} / {e['random']['mean']:.1f} / {step0} / {e['copy']['mean']:.1f}")
        lines.append(f"| {f['fold']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Lead over steps ({', '.join(args.variants)} sets pooled), with token cosine / effective rank "
        "on the first set:",
        "",
    ]
    steps = sorted({int(s) for f in summary["folds"] for s in f["curve"]})
    lines.append("| fold | " + " | ".join(str(s) for s in steps) + " |")
    lines.append("|---|" + "---|" * len(steps))
    for f in summary["folds"]:
        cells = []
        for s in steps:
            c = f["curve"].get(s) or f["curve"].get(str(s))
            cells.append(
                f"{c['lead']['mean']:+.1f} ({c['cosine']:.2f}/{c['rank']:.0f})"
                if c and c["cosine"] is not None
                else (f"{c['lead']['mean']:+.1f}" if c else "")
            )
        lines.append(f"| {f['fold']} | " + " | ".join(cells) + " |")
    minutes = [m for f in summary["folds"] for m in f["minutes"]]
    if minutes:
        lines += [
            "",
            f"Training time per run, from its speed: {min(minutes):.1f}-{max(minutes):.1f} min "
            f"({args.threads} thread(s) per run, {args.parallel} run(s) at a time; slower runs shared the machine).",
        ]
    return "\n".join(lines) + "\n"


def plot_curves(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for f in summary["folds"]:
        steps = sorted(int(s) for s in f["curve"])
        if not steps:
            continue
        mean = [f["curve"][s]["lead"]["mean"] for s in steps]
        sd = [f["curve"][s]["lead"]["sd"] for s in steps]
        (line,) = ax.plot(steps, mean, marker="o", label=f"fold {f['fold']} ({', '.join(f['heldout'])})")
        ax.fill_between(steps, np.subtract(mean, sd), np.add(mean, sd), color=line.get_color(), alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("J&F lead over random (points)")
    ax.set_title(summary["name"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(out: Path, names: list, key: str, path: Path) -> None:
    """One panel per fold, one curve per setting (the mean lead over steps from OUT/report-NAME-KEY.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = {}
    for name in names:
        report = out / f"report-{name}-{key}.json"
        if not report.is_file():
            raise SystemExit(f"error: {report} not found (run the setting, or --report-only, first)")
        reports[name] = json.loads(report.read_text())
    folds = max(len(r["folds"]) for r in reports.values())
    fig, axes = plt.subplots(1, folds, figsize=(4 * folds, 3.4), sharey=True, squeeze=False)
    for name, report in reports.items():
        for f, ax in zip(report["folds"], axes[0]):
            steps = sorted(int(s) for s in f["curve"])
            mean = [f["curve"][str(s)]["lead"]["mean"] for s in steps]
            ax.plot(steps, mean, marker="o", label=name)
            ax.set_title(f"fold {f['fold']}: {', '.join(f['heldout'])} held out", fontsize=9)
    for ax in axes[0]:
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("training step")
    axes[0][0].set_ylabel("J&F lead over random (points)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def random_key(args) -> str:
    """Runs of random encoders are shared by settings with the same architecture."""
    from siammae.config import load_config

    m = load_config(args.recipe, [o for o in args.set if o.startswith("model.")]).model
    return f"_random-{m.arch}-p{m.patch_size}-i{m.img_size}"


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", type=Path, nargs="?", help="folder of videos (any layout siammae shard reads)")
    p.add_argument("--out", type=Path, help="output folder (cached work and reports)")
    p.add_argument("--name", default="tiny", help="name of this setting (its runs: OUT/runs/NAME)")
    p.add_argument("--recipe", default="tiny", help="recipe to train (default: tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    p.add_argument("--peer", type=Path, help="a CropMAE checkout: train its SiamMAE instead of ours")
    p.add_argument("--steps", type=int, default=1200, help="training steps per run (default: 1200)")
    p.add_argument("--batch", type=int, default=16, help="pairs per step (default: 16)")
    p.add_argument("--eval-every", type=int, default=300, help="steps between scored encoders (default: 300)")
    p.add_argument("--train-seeds", default="0,1,2", help="training seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--set-seeds", default="0,1", help="compositor seeds of the curve sets (default: 0,1)")
    p.add_argument("--variants", default="default,hard", help="sets scored at every evaluated step")
    p.add_argument("--final-variants", default="colour,fast,nonrigid,scale", help="sets scored at the last step")
    p.add_argument("--max-folds", type=int, default=5, help="leave one out up to this many videos (default: 5)")
    p.add_argument("--folds", default="", help="run only these folds, comma-separated (e.g. 0; default: all)")
    p.add_argument("--per-video", type=int, default=400, help="pairs sharded per training video (default: 400)")
    p.add_argument("--gap", default="1-4", help="frames between a pair's two frames, MIN-MAX (default: 1-4)")
    p.add_argument(
        "--runs",
        type=int,
        default=0,
        metavar="N",
        help="shard runs of N consecutive frames (--per-video of them) and draw each pair within --gap when "
        "it is read (data.pair_gap), instead of fixed pairs",
    )
    p.add_argument("--sequences", type=int, default=6, help="sequences per composited set (default: 6)")
    p.add_argument("--frames", type=int, default=30, help="frames per sequence (default: 30)")
    p.add_argument("--size", default="480x854", help="composited frame size HxW (default: 480x854)")
    p.add_argument("--eval-size", type=int, default=128, help="short side propagated at (default: 128)")
    p.add_argument("--protocol", default="siammae", help="propagation preset (default: siammae)")
    p.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a propagation knob over the preset, e.g. topk=10 or layer=6 (repeatable; scored apart)",
    )
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / parallel)")
    p.add_argument("--report-only", action="store_true", help="redraw the report from what has run")
    p.add_argument("--compare", metavar="NAME,NAME", help="plot these settings' curves side by side (needs --out)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        return args
    if args.out is None or (args.videos is None and not args.compare):
        p.error("VIDEOS and --out are required (--compare: --out only)")
    ints = lambda text: [int(x) for x in text.split(",") if x != ""]  # noqa: E731
    names = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    args.train_seeds, args.set_seeds, args.folds = ints(args.train_seeds), ints(args.set_seeds), ints(args.folds)
    args.variants, args.final_variants = names(args.variants), names(args.final_variants)
    args.gap = [int(x) for x in args.gap.split("-")]
    if args.runs:
        if args.runs - 1 < args.gap[0]:
            p.error(f"--runs {args.runs} spans {args.runs - 1} frames, less than the smallest gap {args.gap[0]}")
        args.set = [*args.set, f"data.pair_gap=[{args.gap[0]},{args.gap[1]}]"]
    args.size = [int(x) for x in args.size.lower().split("x")]
    args.threads = args.threads or max(1, (os.cpu_count() or 2) // args.parallel)
    args.knobs = {k: _number(v) for k, _, v in (x.partition("=") for x in args.knob)}
    if args.steps % args.eval_every:
        p.error("--steps must be a multiple of --eval-every")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.job:
        run_job(json.loads(args.job))
        return {}
    if args.compare:
        names = [n for n in args.compare.split(",") if n]
        key = evaluation_key(args.eval_size, args.protocol, args.knobs)
        path = args.out / f"compare-{'-'.join(names)}-{key}.png"
        plot_compare(args.out, names, key, path)
        print(f"wrote {path}")
        return {}
    from siammae.synth.variants import VARIANTS

    for v in args.variants + args.final_variants:
        if v not in VARIANTS:
            raise SystemExit(f"error: unknown set variant '{v}' (valid: {', '.join(VARIANTS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    folds = make_folds(list_videos(args.videos), args.max_folds)
    unknown = [k for k in args.folds if not 0 <= k < len(folds)]
    if unknown:
        raise SystemExit(f"error: --folds {unknown[0]}: there are {len(folds)} folds (0..{len(folds) - 1})")
    prepared = []
    for k, (train_videos, held) in enumerate(folds):
        if args.folds and k not in args.folds:
            continue
        print(
            f"fold {k}: train on {len(train_videos)} video(s), hold out {', '.join(Path(h).name for h in held)}",
            flush=True,
        )
        prepared.append(prepare_fold(args, k, train_videos, held))
    (args.out / "folds.json").write_text(json.dumps(prepared, indent=1) + "\n")
    if not args.report_only:
        jobs = []
        curve = [set_name(v, s) for v in args.variants for s in args.set_seeds]
        final = [set_name(v, 0) for v in args.final_variants]
        for fold in prepared:
            k = fold["fold"]
            for seed in args.train_seeds:
                common = dict(
                    recipe=args.recipe,
                    overrides=args.set,
                    shards=fold["shards"],
                    sets=fold["sets"],
                    seed=seed,
                    steps=args.steps,
                    batch=args.batch,
                    eval_every=args.eval_every,
                    curve_sets=curve,
                    final_sets=final,
                    eval_size=args.eval_size,
                    protocol=args.protocol,
                    knobs=args.knobs,
                    threads=args.threads,
                )
                rnd = args.out / "runs" / random_key(args) / f"fold{k}" / f"seed{seed}"
                jobs.append(dict(common, random=True, run_dir=str(rnd), label=f"random fold {k} seed {seed}"))
                run = args.out / "runs" / args.name / f"fold{k}" / f"seed{seed}"
                jobs.append(
                    dict(
                        common,
                        random=False,
                        run_dir=str(run),
                        peer=str(args.peer or ""),
                        label=f"{args.name} fold {k} seed {seed}",
                    )
                )
        run_jobs(jobs, args.parallel, args.threads)
    summary = summarise(args, prepared)
    stem = f"{args.name}-{evaluation_key(args.eval_size, args.protocol, args.knobs)}"
    (args.out / f"report-{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = report_markdown(summary, args)
    (args.out / f"report-{stem}.md").write_text(text)
    plot_curves(summary, args.out / f"curves-{stem}.png")
    print(text)
    return summary


if __name__ == "__main__":
    main()
