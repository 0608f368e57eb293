"""``mean_teacher``: self-ensembling consistency on unlabeled target images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.blocks import EMATeacher, sigmoid_rampup
from benchmark.hparams import HParam, log_uniform, uniform
from benchmark.losses import dice_ce_loss
from benchmark.method import SupervisedMethod
from benchmark.registry import register_method


@register_method("mean_teacher")
class MeanTeacher(SupervisedMethod):
    """Mean-teacher consistency on unlabeled target images (Tarvainen and Valpola, NeurIPS 2017).

    Tarvainen, Valpola. "Mean teachers are better role models." NeurIPS 2017; applied to cross-domain
    segmentation by French et al. (ICLR 2018) and Perone et al. (NeuroImage 2019). The student is trained with its
    supervised loss on labeled source images plus a consistency term: the mean squared difference between its
    softmax on a noisy target image and the softmax of the teacher (an exponential moving average of the
    student's weights) on a differently noisy copy. The consistency weight ramps up with a sigmoid schedule over
    the first ``rampup`` fraction of training.

    Deliberate differences: input perturbation is Gaussian noise on top of the shared augmentation (the papers
    use task-specific augmentations); the teacher, not the student, is used for evaluation only if
    ``predict_with_teacher`` is set (default: the student).
    """

    streams = ("source", "target")
    labeled_stream = "source"
    HPARAMS = {
        "consistency": HParam(1.0, log_uniform(0.1, 10.0), "weight of the consistency term after ramp-up"),
        "ema_decay": HParam(0.99, uniform(0.95, 0.999), "teacher EMA decay"),
        "noise": HParam(0.1, uniform(0.0, 0.3), "std of the Gaussian input noise of each view"),
        "rampup": HParam(0.4, uniform(0.1, 0.6), "fraction of training over which the weight ramps up"),
        "predict_with_teacher": HParam(False, None, "evaluate the teacher instead of the student"),
    }

    def __init__(self, ctx, hparams):
        super().__init__(ctx, hparams)
        self.teacher = EMATeacher(self.segmenter, hparams["ema_decay"])

    def update(self, batch, step):
        hp, opt = self.hparams, self.optimizers[0]
        seg = dice_ce_loss(self.segmenter(batch.source_x), batch.source_y, hp["dice_weight"])
        xt = batch.target_x
        student = self.segmenter(xt + hp["noise"] * torch.randn_like(xt)).softmax(1)
        with torch.no_grad():
            teacher = self.teacher(xt + hp["noise"] * torch.randn_like(xt)).softmax(1)
        cons = F.mse_loss(student, teacher)
        weight = hp["consistency"] * sigmoid_rampup(step, int(hp["rampup"] * self.ctx.total_steps))
        opt.zero_grad(set_to_none=True)
        self.backward(seg + weight * cons)
        self.step(opt)
        self.teacher.update(self.segmenter, step)
        return {"seg": seg.item(), "consistency": cons.item(), "weight": weight}

    def predict(self, images):
        return (self.teacher if self.hparams["predict_with_teacher"] else self.segmenter)(images)
