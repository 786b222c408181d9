"""Train the demo tabular classifier (wine cultivars) and export it to the model repository.

Dev-only. A small random forest on scikit-learn's bundled wine data: no
download, a tree ensemble (so gradients are unavailable and the service must
fall back to black-box methods), and a background sample for SHAP-style
explainers.

    python -m explaind.demo.train_tabular
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

REPO_DIR = Path(__file__).resolve().parent / "repository" / "tabular"
BACKGROUND_ROWS = 100


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def fit_forest(seed: int = 0) -> tuple[RandomForestClassifier, list[np.ndarray]]:
    """The demo's forest and its split (x_train, x_test, y_train, y_test), as exported: the same seed
    gives the same trees (the integration tests compare shap on it with tree_shap on the export)."""
    data = load_wine()
    x = data.data.astype(np.float32)  # the ONNX model sees float32: train on what it sees
    split = train_test_split(x, data.target, test_size=0.3, random_state=seed, stratify=data.target)
    clf = RandomForestClassifier(n_estimators=100, max_depth=6, random_state=seed)
    clf.fit(split[0], split[2])
    return clf, split


def background_rows(x_train: np.ndarray, seed: int = 0) -> np.ndarray:
    """The model's background: BACKGROUND_ROWS training rows, in their order."""
    rows = np.random.default_rng(seed).choice(len(x_train), size=BACKGROUND_ROWS, replace=False)
    return x_train[np.sort(rows)].astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_DIR)
    args = parser.parse_args(argv)

    data = load_wine()
    x = data.data.astype(np.float32)
    clf, (x_train, x_test, y_train, y_test) = fit_forest(args.seed)
    acc = float((clf.predict(x_test) == y_test).mean())
    print(f"tabular held-out accuracy: {acc:.4f} ({len(y_test)} rows, split seed {args.seed})")

    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    outputs = [o.name for o in onx.graph.output]
    if outputs != ["label", "probabilities"]:
        raise RuntimeError(f"unexpected ONNX outputs {outputs}")
    onnx.checker.check_model(onx, full_check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "model.onnx"
    path.write_bytes(onx.SerializeToString())

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"input": x})
    diff = float(np.abs(proba - clf.predict_proba(x)).max())
    print(f"onnxruntime vs sklearn probabilities: max abs diff {diff:.2e} on {len(x)} rows")
    if diff >= 1e-5 or not np.array_equal(label, clf.predict(x)):
        raise RuntimeError(f"ONNX export mismatch: {diff}")
    print(f"exported {path} ({path.stat().st_size} bytes)")

    np.save(args.out / "background.npy", background_rows(x_train, args.seed))

    text = f"""kind: tabular
input: {{name: input}}
output: {{name: probabilities, scores: probabilities}}
labels: {_yaml_list(list(data.target_names))}
feature_names: {_yaml_list(list(data.feature_names))}
background: background.npy
gradients: auto            # tree ensembles have no gradient rule: GetModel says which node
batching: {{max_batch_rows: 2048, max_delay_ms: 2}}
"""
    (args.out / "model.yaml").write_text(text)
    print(f"wrote {args.out / 'model.yaml'} and background.npy [{BACKGROUND_ROWS}, {x.shape[1]}]")


if __name__ == "__main__":
    main()
