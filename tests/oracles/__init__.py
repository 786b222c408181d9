"""Test-only reference implementations ("oracles"): plain numpy / scikit-learn versions of what the
service computes in its ONNX graphs or in streamed chunks, kept out of service/ because only tests
use them.

* noise: the in-graph Gaussian noise (explaind.onnxgraph.noise) element by element;
* lime: LIME's all-at-once image perturbation and weighted Ridge surrogate with lime's feature
  selection (explaind.methods.lime_core streams the same rows and sums);
* kernel_shap: Kernel SHAP's coalitions, coalition values and constrained solve, all rows at once
  (explaind.methods.kernel_shap_core streams them).

tests/conftest.py puts tests/ on sys.path, so every test folder imports them as `oracles.<name>`.
"""
