"""The DCN-v2 ranker's Lightning steps, metrics and ONNX export.

It trains like every other model, through ``training.train`` (run folder, ``trainer=cpu|gpu|ddp``,
``conf/logger``, ``conf/callbacks``, resume, final test on the best checkpoint)::

    python -m training.train model=ranker data=online_retail model.retriever_bundle=<bundle folder>

The data (the retriever's own candidates, features, labels) comes from ``training.ranker_data``; the
network is ``models.ranker.DCNv2Ranker`` (plain PyTorch, exported to ONNX). ``RankerModule`` fits it
with a multi-task BCE (one head per event type) and evaluates the re-ranked list of the early-stopping
users (validation) and of the test stage against the retrieval order.

Metrics (``training.metrics.evaluate_candidate_lists``, the evaluator of every model): relevant = the
candidate was bought in the label period; the ideal DCG counts all items the user bought then (capped at
k), so items the retriever missed count against both orders; ties at their expected position.

Beyond accuracy (``training.metrics.BeyondAccuracy`` through the same call): ``ild@10``,
``category_known@10``, ``novelty@10``, ``coverage@10``, ``tail_share@10``, ``gini@10`` of each user's top-10
of the re-ranked candidates (``<stage>/ild@10``) and of the same candidates in retrieval order
(``<stage>/retrieval_ild@10``), over the item table of the prepared data the ranker trained on
(``training.ranker_data.ItemCatalogue``: categories, training counts of the split's train part).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from features.artifacts import write_json
from models.ranker import DENSE_FEATURES, DCNv2Ranker, FeatureBatch, FeatureSpec, combine_heads
from serving.bundle.contract import RANKER_JSON, RANKER_ONNX, RANKER_TORCH
from training.metrics import evaluate_candidate_lists
from training.ranker_data import ItemCatalogue, RankerData, Stage


def ranking_metrics(stage: Stage, scores: np.ndarray, k: int = 10, model: str = "ranker",
                    catalogue: ItemCatalogue | None = None) -> dict[str, float]:
    """NDCG@k, HR@k, recall@k, MRR of the order given by ``scores`` (higher first) over each request's
    candidates (``training.metrics.evaluate_candidate_lists``: ties at their expected position; relevant items
    the retriever missed count against every order; NaN/inf scores raise ``NonFiniteScoresError``).
    With ``catalogue``, also the beyond-accuracy figures of each request's top-10 in that order."""
    beyond = {} if catalogue is None else {"items": stage.items(), "n_items": catalogue.n_items,
                                           "popularity": catalogue.popularity, "item_category": catalogue.category}
    return evaluate_candidate_lists(scores, stage.batch.offsets, stage.labels[:, 0] > 0,
                                    np.maximum(stage.n_relevant, 1), ks=(k,), model=model, **beyond)


def retrieval_order(stage: Stage) -> np.ndarray:
    """Scores that reproduce the retrieval order (candidates are stored best first)."""
    return -stage.batch.dense[:, DENSE_FEATURES.index("retrieval_rank")]


def stage_metrics(stage: Stage, probs: np.ndarray, spec: FeatureSpec, prefix: str,
                  catalogue: ItemCatalogue | None = None) -> dict[str, float]:
    """Re-ranked vs retrieval order on one stage, the candidates' recall and the user count; with ``catalogue``
    the beyond-accuracy figures of both orders (``<prefix>ild@10`` and ``<prefix>retrieval_ild@10``, ...)."""
    name = prefix.rstrip("/")
    rr = ranking_metrics(stage, combine_heads(probs, spec), model=f"ranker ({name})", catalogue=catalogue)
    base = ranking_metrics(stage, retrieval_order(stage), model=f"retrieval order ({name})", catalogue=catalogue)
    n_cand = int(np.diff(stage.batch.offsets).max()) if len(stage.users) else 0
    recall = np.mean([stage.labels[stage.rows(r), 0].sum() / max(1, stage.n_relevant[r]) for r in range(len(stage.users))])
    out = {f"{prefix}{k}": v for k, v in rr.items()}
    out.update({f"{prefix}retrieval_{k}": v for k, v in base.items()})
    out.update({f"{prefix}rerank_gain": rr["ndcg@10"] / base["ndcg@10"] - 1.0 if base["ndcg@10"] > 0 else float("nan"),
                f"{prefix}users": float(len(stage.users)), f"{prefix}candidate_recall@{n_cand}": float(recall)})
    return out


class RankerModule(pl.LightningModule):
    """Multi-task BCE over the heads; validation/test metrics of the re-ranked candidates of each stage
    (``trainer.datamodule.stage("valid" | "test")``)."""

    def __init__(self, net: DCNv2Ranker, spec: FeatureSpec, lr: float, weight_decay: float,
                 head_weights: list[float]) -> None:
        super().__init__()
        self.net, self.spec = net, spec
        self.lr, self.weight_decay = lr, weight_decay
        self.register_buffer("head_w", torch.tensor(head_weights, dtype=torch.float32))
        self._probs: list[torch.Tensor] = []
        self.last_eval: dict[str, float] = {}

    def training_step(self, batch, _):
        dense, cat, u, it, y = batch
        logits = self.net.logits(dense, cat, u, it)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").mean(0)
                * self.head_w).sum()
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(y))
        return loss

    def _eval_step(self, batch) -> torch.Tensor:
        dense, cat, u, it, y = batch
        probs = self.net(dense, cat, u, it).float()
        self._probs.append(probs.detach().cpu())
        return torch.nn.functional.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), y)

    def _eval_end(self, name: str) -> dict[str, float]:
        probs = torch.cat(self._probs).numpy() if self._probs else np.zeros((0, len(self.spec.heads)), np.float32)
        self._probs = []
        dm = self.trainer.datamodule
        m = stage_metrics(dm.stage(name), probs, self.spec, f"{name}/", dm.data.catalogue)
        self.last_eval.update(m)
        return m

    def on_validation_epoch_start(self) -> None:
        self._probs = []

    def validation_step(self, batch, _):
        self.log("valid/loss", self._eval_step(batch), on_epoch=True, on_step=False, batch_size=len(batch[-1]))

    def on_validation_epoch_end(self) -> None:
        m = self._eval_end("valid")
        self.log("valid/ndcg@10", m["valid/ndcg@10"], prog_bar=True)
        self.log_dict({k: v for k, v in m.items() if k != "valid/ndcg@10" and np.isfinite(v)})

    def on_test_epoch_start(self) -> None:
        self._probs = []

    def test_step(self, batch, _):
        self.log("test/loss", self._eval_step(batch), on_epoch=True, on_step=False, batch_size=len(batch[-1]))

    def on_test_epoch_end(self) -> None:
        self.log_dict({k: v for k, v in self._eval_end("test").items() if np.isfinite(v)})

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def build_module(data: RankerData, m: DictConfig) -> RankerModule:
    """The network sized to ``data`` (dense inputs normalised by the training users' statistics), in its module."""
    net = DCNv2Ranker(len(DENSE_FEATURES), data.spec.cat_cardinalities, data.spec.dim, len(data.heads),
                      cat_emb_dim=int(m.arch.cat_emb_dim), n_cross=int(m.arch.n_cross), hidden=list(m.arch.hidden),
                      dropout=float(m.arch.dropout), emb_proj=int(m.arch.emb_proj))
    net.set_normalisation(data.train.batch.dense.mean(0), data.train.batch.dense.std(0))
    return RankerModule(net, data.spec, float(m.lr), float(m.weight_decay),
                        [float(m.loss_weights.get(h, 1.0)) for h in data.heads])


def export_onnx(net: DCNv2Ranker, spec: FeatureSpec, out_dir: Path, sample: FeatureBatch, tolerance: float) -> dict:
    """Write ``ranker.onnx`` + ``ranker.json`` + ``ranker_torch.pt`` (the bundle's file names) into ``out_dir``;
    check ONNX Runtime against PyTorch on ``sample``. The torch weights let serving run the ranker on CUDA where
    ONNX Runtime has no CUDA provider (``serving.accelerators``)."""
    import onnxruntime as ort

    out_dir.mkdir(parents=True, exist_ok=True)
    net = net.to("cpu").float().eval()
    n = min(256, len(sample.dense))
    args = tuple(torch.from_numpy(np.ascontiguousarray(x[:n])) for x in (sample.dense, sample.cat, sample.user_emb, sample.item_emb))
    path = out_dir / RANKER_ONNX
    torch.onnx.export(net, args, str(path), input_names=list(spec.onnx_inputs), output_names=[spec.onnx_output],
                      dynamic_axes={**{k: {0: "n"} for k in spec.onnx_inputs}, spec.onnx_output: {0: "n"}},
                      dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run([spec.onnx_output], {k: a.numpy() for k, a in zip(spec.onnx_inputs, args)})
    with torch.inference_mode():
        ref = net(*args).numpy()
    diff = float(np.abs(got - ref).max()) if n else 0.0
    if diff > tolerance:
        raise RuntimeError(f"{RANKER_ONNX} differs from PyTorch by {diff:.2e} > model.onnx_tolerance={tolerance}")
    write_json(out_dir / RANKER_JSON, spec.to_json())
    torch.save({"init": net.init_kwargs, "state_dict": net.state_dict()}, out_dir / RANKER_TORCH)
    return {"onnx_max_abs_diff": diff, "onnx_rows_checked": n}

