"""LightningModules: the loss, optimiser and evaluation steps around the plain ``models`` networks.

``RetrievalModule`` holds what every next-item retriever shares (full-ranking validation/test through
``training.metrics.RankingEvaluator``, AdamW + warmup/cosine, NaN guard); ``SASRecModule`` and ``TwoTowerModule`` add
their network and loss. Scores are over item *columns* 0..N-1 (= item_id); networks use indices
item_id + 1 with 0 as padding.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import pytorch_lightning as pl
import torch

from models.losses import full_softmax_ce, in_batch_softmax, sampled_softmax, uniform_log_q
from models.sasrec import SASRec, SASRecConfig
from models.two_tower import TwoTower, TwoTowerConfig
from training.metrics import RankingEvaluator


def non_padding(states: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The states ``[B, L, d]`` and targets ``[B, L]`` of the positions whose target is an item (not padding).

    ``rows``: those positions, flat, counted on the CPU by ``TrainBatches(pack=...)``; with them the shapes are
    known in advance and a CUDA step needs no GPU->CPU sync (a boolean mask would cost one).
    """
    if rows is not None:
        return states.reshape(-1, states.shape[-1]).index_select(0, rows), targets.reshape(-1).index_select(0, rows)
    keep = targets > 0
    return states[keep], targets[keep]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the last good checkpoint is left untouched."""


def split_scorer(module: "RetrievalModule", split, items: torch.Tensor):
    """``(inputs, start, stop) -> scores`` over ``items`` for rows of ``split`` (its user features included)."""
    return lambda x, a, b: module.score_batch(x, items, split.user_feat_rows(a, b))  # noqa: E731


class RetrievalModule(pl.LightningModule):
    """Steps, evaluation and optimiser of a retrieval network (``network`` built from ``network_config(**net)``).

    ``attr_width``: attribute ids per item; the item attribute buffer is created with that shape and filled by
    ``build`` (a checkpoint restores it).
    """

    network: type
    network_config: type

    def __init__(self, net: dict, optim: dict, evaluation: dict, loss: dict, attr_width: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim = dict(optim)
        self.evaluation = dict(evaluation)
        self._acc: RankingEvaluator | None = None
        self.last_eval: dict[str, float] = {}
        cfg = self.network_config(**net)
        attrs = torch.zeros(cfg.n_items + 1, max(attr_width, 1), dtype=torch.long) if cfg.n_attributes else None
        self.net = self.network(cfg, attrs)
        self.n_items = cfg.n_items
        self.loss_cfg = dict(loss)
        self.register_buffer("popularity", torch.zeros(cfg.n_items + 1))

    @classmethod
    def build(cls, net_cfg, optim: dict, evaluation: dict, loss: dict, item_attributes: torch.Tensor | None,
              popularity: torch.Tensor) -> "RetrievalModule":
        width = 0 if item_attributes is None else int(item_attributes.shape[1])
        module = cls(asdict(net_cfg), optim, evaluation, loss, width)
        if item_attributes is not None and net_cfg.n_attributes:
            module.net.item_attributes.copy_(item_attributes)
        module.popularity.copy_(popularity)
        return module

    # -- to be provided by subclasses
    def user_embeddings(self, inputs: torch.Tensor, user_feat: torch.Tensor | None = None) -> torch.Tensor:  # [B, d]
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:  # [N, d], row i = item_id i
        raise NotImplementedError

    def training_loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    # -- training
    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None:
            dm.to(self.device)

    def on_test_start(self) -> None:
        self.on_fit_start()

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch, self.global_rank, self.trainer.world_size)

    # NaN guard. Checking a GPU value stalls the CPU until the GPU has caught up, so on the GPU the flag
    # is accumulated on the device and read every `nan_check_every` steps and always before validation,
    # i.e. before any checkpoint of the epoch is written: a NaN never reaches a saved checkpoint.
    nan_check_every: int = 1

    def _check_finite(self) -> None:
        flag = getattr(self, "_nonfinite", None)
        if flag is not None and bool(flag):
            raise NonFiniteLossError(
                f"training loss became NaN/inf in epoch {self.current_epoch} (by step {self.global_step}); "
                f"try a lower model.lr or trainer.precision=32-true; the last good checkpoint is kept"
            )

    def on_validation_epoch_start(self) -> None:
        self._check_finite()
        self._acc = self._new_acc(sampled=False)
        with torch.no_grad():
            self._items = self.item_embeddings()

    def on_train_epoch_end(self) -> None:
        self._check_finite()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        bad = ~torch.isfinite(loss.detach())
        flag = getattr(self, "_nonfinite", None)
        self._nonfinite = bad if flag is None else flag | bad
        if (batch_idx + 1) % max(1, int(self.nan_check_every)) == 0:
            self._check_finite()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(next(iter(batch.values()))))
        scale = batch.get("loss_scale")              # length-grouped batches: weigh by the batch's target count
        return loss if scale is None else loss * scale

    def configure_optimizers(self):
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name or name.endswith("bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": float(o["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}]
        betas = tuple(float(b) for b in o.get("betas", (0.9, 0.999)))
        # Fused Adam (one kernel per step) unscales gradients itself, so Lightning refuses to clip them under
        # bf16/16-mixed precision (seen on an H200): fuse only when no gradient clipping is configured.
        clip = getattr(self.trainer, "gradient_clip_val", None) if self._trainer is not None else None
        fused = self.device.type == "cuda" and not clip
        if o["optimizer"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=float(o["lr"]), betas=betas, fused=fused)
        elif o["optimizer"] == "adam":
            opt = torch.optim.Adam(groups, lr=float(o["lr"]), betas=betas, fused=fused)
        else:
            raise ValueError(f"model.optimizer must be 'adam' or 'adamw', got {o['optimizer']!r}")
        warmup = int(o.get("warmup_steps", 0))
        schedule = o.get("scheduler", "constant")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"model.scheduler must be 'constant' or 'cosine', got {schedule!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        min_ratio = float(o.get("min_lr_ratio", 0.0))

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if schedule == "cosine":
                t = min(1.0, (step - warmup) / max(1, total - warmup))
                return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation (validation and test share it)
    def _new_acc(self, sampled: bool) -> RankingEvaluator:
        pop = self.popularity[1:] if hasattr(self, "popularity") else None
        return RankingEvaluator(
            n_items=self.n_items, ks=tuple(self.evaluation["ks"]), model=type(self).__name__,
            exclude_history=bool(self.evaluation["exclude_history"]), popularity=pop,
            sampled_negatives=int(self.evaluation["sampled_negatives"]) if sampled else 0, seed=0,
            item_category=getattr(self, "item_category", None),
        )

    def score_batch(self, inputs: torch.Tensor, items: torch.Tensor | None = None,
                    user_feat: torch.Tensor | None = None) -> torch.Tensor:
        items = self.item_embeddings() if items is None else items
        users = self.user_embeddings(inputs, user_feat)
        with torch.autocast(device_type=users.device.type, enabled=False):   # fp32 scores: no bf16 ties
            return users.float() @ items.float().T

    def _eval_step(self, batch: dict, split) -> None:
        scores = self.score_batch(batch["inputs"], self._items, batch.get("user_feat"))
        rel_rows, rel_items = split.relevant_coords(batch["start"], batch["stop"])
        h_rows, h_items = split.history_mask_coords(batch["start"], batch["stop"])
        self._acc.update(scores, (rel_rows, rel_items - 1), (h_rows, h_items - 1))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.trainer.datamodule.valid_epoch)

    def on_validation_epoch_end(self) -> None:
        m = self._acc.compute("valid/")
        self.last_eval.update(m)
        self.log_dict({k: v for k, v in m.items() if k not in ("valid/n_users", "valid/ndcg@10")})
        self.log("valid/ndcg@10", m["valid/ndcg@10"], prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._acc = self._new_acc(sampled=int(self.evaluation["sampled_negatives"]) > 0)
        with torch.no_grad():
            self._items = self.item_embeddings()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.trainer.datamodule.data.test)

    def on_test_epoch_end(self) -> None:
        m = self._acc.compute("test/")
        self.last_eval.update(m)
        self.log_dict(m)


class SASRecModule(RetrievalModule):
    network, network_config = SASRec, SASRecConfig

    def user_embeddings(self, inputs: torch.Tensor, user_feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.encode(inputs)

    def item_embeddings(self) -> torch.Tensor:
        return self.net.output_table()[1:]

    def training_loss(self, batch: dict) -> torch.Tensor:
        seqs = batch["seqs"]
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        table = self.net.item_table()
        hidden = self.net(inputs, table)
        out_table = table if self.net.out_emb is None else self.net.output_table()
        kind = self.loss_cfg["type"]
        smoothing = float(self.loss_cfg.get("label_smoothing", 0.0))
        h, t = non_padding(hidden, targets, batch.get("target_rows"))
        if kind == "full_ce":
            return full_softmax_ce(h, out_table, t, smoothing)
        if kind == "sampled_softmax":
            alpha = float(self.loss_cfg.get("proposal_alpha", 0.75))
            q = self.popularity.clamp(min=0) ** alpha
            q[0] = 0
            q = q + (q.sum() * 1e-6 / len(q))            # every item can be drawn
            q[0] = 0
            return sampled_softmax(h, out_table, t, int(self.loss_cfg["num_negatives"]), q / q.sum(),
                                   bool(self.loss_cfg.get("logq_correction", True)), smoothing)
        raise ValueError(f"model.loss must be 'full_ce' or 'sampled_softmax', got {kind!r}")


class TwoTowerModule(RetrievalModule):
    network, network_config = TwoTower, TwoTowerConfig

    @classmethod
    def build(cls, net_cfg: TwoTowerConfig, optim: dict, evaluation: dict, loss: dict,
              item_attributes: torch.Tensor | None, popularity: torch.Tensor,
              price_bucket: torch.Tensor | None = None) -> "TwoTowerModule":
        module = super().build(net_cfg, optim, evaluation, loss, item_attributes, popularity)
        if price_bucket is not None and net_cfg.n_price_buckets:
            module.net.price_bucket.copy_(price_bucket)
        return module

    def user_embeddings(self, inputs: torch.Tensor, user_feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.encode(inputs, user_feat)

    def item_embeddings(self) -> torch.Tensor:
        return self.net.item_tower()[1:]

    def training_loss(self, batch: dict) -> torch.Tensor:
        seqs = batch["seqs"]
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        users = self.net.user_states(inputs, batch.get("user_feat"))  # [B, L, d]: state after each prefix
        u, t = non_padding(users, targets, batch.get("target_rows"))
        cap = int(self.loss_cfg.get("max_positives", 0))
        if cap and len(t) > cap:                               # the in-batch logits are P x P: bound P
            pick = torch.randperm(len(t), device=t.device)[:cap]
            u, t = u[pick], t[pick]
        items = self.net.item_tower()                          # [N+1, d]
        q = self.popularity / self.popularity.sum().clamp(min=1)
        log_q = torch.log(q[t].clamp(min=1e-9) * len(t)) if self.loss_cfg.get("logq_correction", True) else None
        m = int(self.loss_cfg.get("random_negatives", 0))
        rnd = rnd_lq = None
        if m > 0:
            idx = torch.randint(1, self.n_items + 1, (m,), device=seqs.device)
            rnd, rnd_lq = items[idx], uniform_log_q(m, self.n_items)
        return in_batch_softmax(u, items[t], t, log_q, rnd, rnd_lq, float(self.loss_cfg.get("temperature", 0.05)))
