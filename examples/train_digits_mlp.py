"""Train an MLP on scikit-learn's digits (shipped with scikit-learn: no download) on the CPU,
once with adamfast.torch.AdamW and once with torch.optim.AdamW(fused=True).

The two runs start from the same weights and see the same batches; the only
change is the optimizer class, so the final accuracies should agree (up to a
few ulps of float32 rounding in the step).  It prints the time per step, split
into forward+backward and optimizer step (medians; the two runs take turns on
each batch).  ``--hidden 4096`` makes a 17M-parameter model.

    pip install scikit-learn
    python examples/train_digits_mlp.py [--epochs 30] [--hidden 1024]

The loop is an ordinary torch loop: a scheduler, zero_grad, backward, step.
Passing ``set_to_none=False`` to zero_grad keeps the gradients bound to
adamfast's flat buffer (one memset, no copy at the step); torch's default
(``set_to_none=True``) works too, with one gradient copy per step.
"""

import argparse
import statistics
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import adamfast.torch as aft


def data(seed=0):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    return Xtr, Xte, ytr, yte


def model(hidden, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


class Run:
    """One model and its optimizer; the runs are stepped in turn on the same batch, so
    drift on a shared machine hits them alike."""

    def __init__(self, name, make_opt, args, total_steps):
        self.name = name
        self.net = model(args.hidden)
        self.opt = make_opt(self.net.parameters())
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=args.lr,
                                                         total_steps=total_steps)
        self.fb, self.st = [], []

    def step(self, x, y):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(self.net(x), y).backward()
        t1 = time.perf_counter()
        self.opt.step()
        t2 = time.perf_counter()
        self.sched.step()
        self.fb.append(t1 - t0)
        self.st.append(t2 - t1)


def median_ms(times):
    return statistics.median(times) * 1e3


def train(runs, args, Xtr, ytr):
    g = torch.Generator().manual_seed(1)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), args.batch):
            idx = perm[i:i + args.batch]
            order = runs if (epoch + i // args.batch) % 2 == 0 else runs[::-1]
            for run in order:
                run.step(Xtr[idx], ytr[idx])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    Xtr, Xte, ytr, yte = data()
    total = args.epochs * ((len(Xtr) + args.batch - 1) // args.batch)
    runs = [Run("adamfast.torch.AdamW",
                lambda ps: aft.AdamW(ps, lr=args.lr, weight_decay=1e-2), args, total),
            Run("torch.optim.AdamW(fused=True)",
                lambda ps: torch.optim.AdamW(ps, lr=args.lr, weight_decay=1e-2, fused=True),
                args, total)]
    params = sum(p.numel() for p in runs[0].net.parameters())
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, MLP 64-{args.hidden}-{args.hidden}-10 "
          f"({params:,} params), {args.epochs} epochs, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}; the two runs take turns on each batch, medians per step")
    train(runs, args, Xtr, ytr)
    for run in runs:
        with torch.no_grad():
            acc = (run.net(Xte).argmax(1) == yte).float().mean().item()
        print(f"{run.name:<32} fwd+bwd {median_ms(run.fb):7.3f} ms/step  optimizer step "
              f"{median_ms(run.st):7.3f} ms/step  test accuracy {acc:.4f}")
    a, t = runs
    print(f"adamfast / torch (median ratio): step {median_ms(a.st) / median_ms(t.st):.2f}, "
          f"fwd+bwd {median_ms(a.fb) / median_ms(t.fb):.2f}")

if __name__ == "__main__":
    main()
