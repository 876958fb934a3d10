#!/usr/bin/env python3
"""siammae's figures beside the reference scorers' on siammae's own saved outputs.

  siammae benchmark --checkpoint RUN --davis D --jhmdb J --vip V --out bench/
  python tools/parity.py bench/ --crw ~/src/videowalk --davis-evaluation ~/src/davis2017-evaluation \
      --cropmae ~/src/CropMAE

For each task in ``bench/benchmark.json`` the saved predictions are scored by the reference code of a
checkout the user fetched (never copied into this project):

- DAVIS: davis2017-evaluation's ``DAVISEvaluation`` (semi-supervised) on ``bench/davis/<seq>/*.png``;
- JHMDB: CRW's ``code/eval/eval_pck.py`` and/or CropMAE's copy on ``bench/jhmdb/joints.json`` written
  in their input format (a pickled (2, 15, T) array per video, ``<i>.dat`` in list order, in units of a
  40-cell grid, -1 where a joint has no prediction) with a list file (CRW: frames, then .mat; CropMAE:
  the other way round); CRW's two hard-coded paths are the only lines set, CropMAE's takes options;
- VIP: CRW's ``code/eval/eval_vip.py`` and/or CropMAE's copy (``downstreams/propagation/src/eval/
  eval_vip.py``) on ``bench/vip/predictions/``, which holds exactly the frames siammae scored. Each script
  pairs prediction and ground truth by file name in its own way (CRW: the same name; CropMAE: the name
  up to its first ``_`` plus ``.png``), so the files are linked under the name the script wants; a
  prediction folder written in that script's naming (``vip_names``) can also be given to it directly.

It prints each figure twice with the difference, at full precision. The reference scripts need what
they import (OpenCV, scikit-image, pandas for DAVIS): a missing one is reported with its name.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CRW_GRID = 40  # eval_pck.py's feat_res: its predictions are in units of a 40-cell grid


class ParityError(Exception):
    """A missing file or checkout; one line."""


def read_benchmark(folder: Path) -> dict:
    path = folder / "benchmark.json"
    if not path.is_file():
        raise ParityError(f"no benchmark.json in {folder} (run siammae benchmark --out {folder} first)")
    return json.loads(path.read_text())


def reference_script(checkout: Path, relative: str, repository: str = "ajabri/videowalk") -> Path:
    script = checkout / relative
    if not script.is_file():
        raise ParityError(f"{script} not found: is {checkout} a checkout of {repository}?")
    return script


def run_reference(argv: list, cwd: Path) -> str:
    """Run a reference script; its stdout, or a ParityError naming a missing package."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        missing = re.search(r"No module named '([^']+)'", proc.stderr)
        hint = f": it needs the package {missing.group(1)!r}" if missing else ""
        last = proc.stderr.strip().splitlines()[-1:] or ["(no error output)"]
        raise ParityError(f"{argv[1]} failed{hint} ({last[0]})")
    return proc.stdout


# ----------------------------------------------------------------------------- JHMDB


def crw_pck_inputs(joints: dict, root: Path, out: Path, mat_first: bool = False) -> Path:
    """Write CRW's eval_pck.py inputs for siammae's ``joints.json`` (name -> (T, 15, 2) pixels, null where
    unpredicted) into ``out``: ``<i>.dat`` per video and ``list.txt`` (a line: the frames' folder, then the
    .mat; ``mat_first``: the other way round, as CropMAE's copy reads it); -> the list file."""
    from PIL import Image

    lines = []
    for i, (name, pred) in enumerate(joints.items()):
        images = root / "Rename_Images" / name
        height, width = np.asarray(Image.open(images / "00001.png")).shape[:2]
        pred = np.array([[[np.nan if v is None else v for v in joint] for joint in frame] for frame in pred])
        grid = np.stack([pred[..., 0] / width * CRW_GRID, pred[..., 1] / height * CRW_GRID])  # (2, T, 15)
        grid = np.where(np.isfinite(grid), grid, -1.0).transpose(0, 2, 1)  # (2, 15, T); -1: no prediction
        with open(out / f"{i}.dat", "wb") as f:
            pickle.dump(grid, f)  # what numpy's ndarray.dump writes, which the script np.load()s
        mat = root / "joint_positions" / name / "joint_positions.mat"
        lines.append(f"{mat} {images}" if mat_first else f"{images} {mat}")
    listing = out / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def crw_pck(checkout: Path, joints_json: Path, root: Path) -> dict:
    """PCK@0.1 and @0.2 (fractions) of siammae's saved joints, by CRW's eval_pck.py."""
    script = reference_script(checkout, "code/eval/eval_pck.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        listing = crw_pck_inputs(json.loads(joints_json.read_text()), root, tmp)
        source = script.read_text()
        source = re.sub(r"^filelist = .*$", f"filelist = {str(listing)!r}", source, count=1, flags=re.M)
        source = re.sub(r"^src_folder = .*$", f"src_folder = {str(tmp) + '/'!r}", source, count=1, flags=re.M)
        (tmp / "eval_pck.py").write_text(source)
        stdout = run_reference([sys.executable, str(tmp / "eval_pck.py")], tmp)
    return printed_pck(stdout)


def cropmae_pck(checkout: Path, joints_json: Path, root: Path) -> dict:
    """PCK@0.1 and @0.2 (fractions) of siammae's saved joints, by CropMAE's copy of eval_pck.py. Its
    ``__main__`` guard never fires (it compares two strings), so its ``main`` is called with its options;
    ``--feat_res`` is the grid the .dat files are written in."""
    script = reference_script(checkout, "downstreams/propagation/src/eval/eval_pck.py", "alexandre-eymael/CropMAE")
    with tempfile.TemporaryDirectory() as tmp:
        listing = crw_pck_inputs(json.loads(joints_json.read_text()), root, Path(tmp), mat_first=True)
        code = (
            f"import argparse, sys; sys.path.insert(0, {str(script.parent)!r}); import eval_pck\n"
            f"eval_pck.main(argparse.Namespace(filelist={str(listing)!r}, src_folder={tmp!r}, "
            f"feat_res=[{CRW_GRID}, {CRW_GRID}]))\n"
        )
        stdout = run_reference([sys.executable, "-c", code], Path(tmp))
    return printed_pck(stdout)


def printed_pck(stdout: str) -> dict:
    """PCK@0.1 and @0.2 as fractions, from the ``0.1: [percent]`` lines both eval_pck.py scripts print."""
    found = dict(re.findall(r"^(0\.[12]): \[([0-9.eE+-]+)\]", stdout, flags=re.M))
    if set(found) != {"0.1", "0.2"}:
        raise ParityError(f"eval_pck.py printed no PCK: {stdout.strip().splitlines()[-1:]}")
    return {f"PCK@{a}": float(found[a]) / 100 for a in ("0.1", "0.2")}


# ----------------------------------------------------------------------------- VIP


VIP_SCRIPTS = {  # tool -> (its eval_vip.py in the checkout, the repository, the prediction naming it reads)
    "crw": ("code/eval/eval_vip.py", "ajabri/videowalk", "crw"),
    "cropmae": ("downstreams/propagation/src/eval/eval_vip.py", "alexandre-eymael/CropMAE", "cropmae"),
}


def link_vip_predictions(predictions: Path, out: Path, names: str) -> None:
    """Link every saved prediction ``predictions/<video>/<stem><suffix>`` as ``out/<video>/<stem>`` plus the
    suffix of the ``names`` convention (``vip.NAME_SUFFIX``): what that convention's script pairs with
    ``<stem>.png`` of the ground truth."""
    from siammae.tasks.vip import NAME_SUFFIX

    for video in sorted(p for p in predictions.iterdir() if p.is_dir()):
        (out / video.name).mkdir()
        for png in sorted(video.glob("*.png")):
            stem = png.name.split("_")[0].removesuffix(".png")  # either convention: the frame's stem
            (out / video.name / f"{stem}{NAME_SUFFIX[names]}").symlink_to(png.resolve())


def reference_miou(tool: str, checkout: Path, predictions: Path, root: Path) -> float:
    """mIoU of siammae's saved part PNGs, by ``tool``'s eval_vip.py (``VIP_SCRIPTS``)."""
    path, repository, names = VIP_SCRIPTS[tool]
    script = reference_script(checkout, path, repository)
    fine = root / "VIP_Fine" if (root / "VIP_Fine").is_dir() else root
    with tempfile.TemporaryDirectory() as tmp:
        link_vip_predictions(predictions, Path(tmp), names)
        stdout = run_reference(
            [sys.executable, str(script), "-g", str(fine / "Annotations" / "Category_ids") + "/", "-p", tmp + "/"],
            script.parent,
        )
    found = re.search(r">>> mean IU ([0-9.eE+-]+|nan)", stdout)
    if not found:  # CropMAE's script exits quietly on a prediction value above 20
        raise ParityError(f"{script} printed no mean IU: {stdout.strip().splitlines()[-1:]}")
    return float(found.group(1))


# ----------------------------------------------------------------------------- DAVIS


def official_jandf(checkout: Path, predictions: Path, root: Path) -> dict:
    """J&F, J and F means of siammae's saved masks, by davis2017-evaluation's DAVISEvaluation."""
    if not (checkout / "davis2017" / "evaluation.py").is_file():
        raise ParityError(f"{checkout}: not a checkout of davisvideochallenge/davis2017-evaluation")
    code = (
        "import json, sys, numpy as np\n"
        f"sys.path.insert(0, {str(checkout)!r})\n"
        "from davis2017.evaluation import DAVISEvaluation\n"
        f"m = DAVISEvaluation(davis_root={str(root)!r}, task='semi-supervised', gt_set='val')"
        f".evaluate({str(predictions)!r})\n"
        "J, F = np.mean(m['J']['M']), np.mean(m['F']['M'])\n"
        "print(json.dumps({'J&F': (J + F) / 2, 'J': J, 'F': F}))\n"
    )
    stdout = run_reference([sys.executable, "-c", code], checkout)
    return json.loads(stdout.strip().splitlines()[-1])


def ours_jandf(predictions: Path, root: Path) -> dict:
    from siammae.tasks.jandf import evaluate

    row = evaluate(root, predictions, "val").global_row()
    return {"J&F": row["J&F-Mean"], "J": row["J-Mean"], "F": row["F-Mean"]}


# ----------------------------------------------------------------------------- the table


def compare(folder: Path, crw, davis_evaluation, cropmae=None) -> list:
    """[(task, figure, siammae's, the reference's, which reference)] for every task of the benchmark."""
    tasks = read_benchmark(folder)["tasks"]
    rows = []
    if "davis" in tasks and davis_evaluation:
        root = Path(tasks["davis"]["root"])
        ours, theirs = ours_jandf(folder / "davis", root), official_jandf(davis_evaluation, folder / "davis", root)
        rows += [("davis", k, ours[k], theirs[k], "davis2017-evaluation") for k in ours]
    if "jhmdb" in tasks and crw:
        overall = json.loads((folder / "jhmdb" / "pck.json").read_text())["overall"]["pck"]
        theirs = crw_pck(crw, folder / "jhmdb" / "joints.json", Path(tasks["jhmdb"]["root"]))
        rows += [("jhmdb", k, overall[k.split("@")[1]], theirs[k], "CRW eval_pck.py") for k in theirs]
    if "jhmdb" in tasks and cropmae:
        overall = json.loads((folder / "jhmdb" / "pck.json").read_text())["overall"]["pck"]
        theirs = cropmae_pck(cropmae, folder / "jhmdb" / "joints.json", Path(tasks["jhmdb"]["root"]))
        rows += [("jhmdb", k, overall[k.split("@")[1]], theirs[k], "CropMAE eval_pck.py") for k in theirs]
    if "vip" in tasks:
        ours = json.loads((folder / "vip" / "vip.json").read_text())
        frame0 = "frame 0 scored" if ours.get("first_frame_scored") else "frame 0 not scored"
        predictions = folder / "vip" / ours.get("predictions", "predictions")
        if not predictions.is_dir():
            raise ParityError(f"{predictions} not found: VIP outputs of an older siammae; run the benchmark again")
        for tool, checkout in (("crw", crw), ("cropmae", cropmae)):
            if checkout:
                theirs = reference_miou(tool, checkout, predictions, Path(tasks["vip"]["root"]))
                who = "CRW eval_vip.py" if tool == "crw" else "CropMAE eval_vip.py"
                rows.append(("vip", f"mIoU ({frame0})", ours["miou"], theirs, who))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", type=Path, help="a siammae benchmark output folder (holds benchmark.json)")
    p.add_argument("--crw", type=Path, help="a checkout of ajabri/videowalk (JHMDB and VIP scorers)")
    p.add_argument("--davis-evaluation", type=Path, help="a checkout of davisvideochallenge/davis2017-evaluation")
    p.add_argument("--cropmae", type=Path, help="a checkout of alexandre-eymael/CropMAE (JHMDB and VIP scorers)")
    args = p.parse_args(argv)
    if not (args.crw or args.davis_evaluation or args.cropmae):
        p.error("give --crw, --davis-evaluation and/or --cropmae")
    try:
        rows = compare(args.benchmark, args.crw, args.davis_evaluation, args.cropmae)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("nothing to compare: the benchmark has no task these checkouts score", file=sys.stderr)
        return 2
    print(f"{'task':6s} {'figure':26s} {'siammae':>12s} {'reference':>12s} {'difference':>11s}  reference")
    for task, figure, ours, theirs, who in rows:
        print(f"{task:6s} {figure:26s} {ours:12.9f} {theirs:12.9f} {ours - theirs:11.2e}  {who}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
