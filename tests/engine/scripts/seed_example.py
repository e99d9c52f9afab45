"""The seed's end-to-end example (its section 8) written in Python, line for line.

What differs from the seed's pseudocode: the imports; Python spellings of its syntax (``def``,
``sys.argv[1:]``, ``match``/``case``); the blocking ``validate_all_sync`` for the seed's call from
sync code; the helpers the seed leaves to the user (``create_model``, ``create_dataloader``); and
the two metrics the seed reads from ``evaluator.state.metrics`` ("loss", "acc"), attached to the
evaluator; one ``print`` shows them. Everything else is the seed's: ``evaluator.run(val_loader)``
inside a sync EPOCH_COMPLETED handler and a top-level ``trainer.run(...)``, as in Ignite.

Run it in a folder holding ``config/train.sdn`` and ``data/{train,val}/{x,y}.bin``
(``tests/engine/test_scripts.py`` writes them).
"""

import sys
from glob import glob

import torch

from aiotrain import (
    Accuracy,
    AsyncLoader,
    CacheManager,
    Checkpoint,
    Conf,
    EarlyStopping,
    Engine,
    Events,
    Loss,
    MmapDataset,
    RuntimeValidator,
    Track,
    ValidationMode,
)


class Pairs:
    """(features, label) records from two memory-mapped files of the same length."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def create_model(cfg):
    return torch.nn.Sequential(torch.nn.Linear(cfg.features, cfg.hidden), torch.nn.ReLU(),
                               torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, cfg.classes))


def create_dataloader(cfg, cache, split):
    root = f"{cfg.root}/{split}"
    x = MmapDataset(f"{root}/x.bin", (cfg.features,), torch.float32, cache=cache)
    y = MmapDataset(f"{root}/y.bin", (), torch.int64, cache=cache)
    return AsyncLoader(Pairs(x, y), cfg.batch_size, shuffle=split == "train", seed=0)


torch.manual_seed(0)

# 1. Load configuration (SDN format)
cfg = Conf.load_sdn("config/train.sdn")
cli_overrides = Conf.from_cli_dotlist(sys.argv[1:])
cfg = Conf.merge(cfg, cli_overrides)
cfg = Conf.resolve(cfg)

# 2. Setup cache system
cache = CacheManager(memory_limit=cfg.cache.memory_limit)
dataset_files = glob("data/train/*.bin") + glob("data/val/*.bin")
cache.scan_files(dataset_files, priorities=cfg.cache.priorities)

print("Cache stats:", cache.stats())

# 3. Setup validation
match cfg.validation_mode:
    case "check_only":
        validation_mode = ValidationMode.CHECK_ONLY
    case "train_only":
        validation_mode = ValidationMode.TRAIN_ONLY
    case "check_and_train":
        validation_mode = ValidationMode.CHECK_AND_TRAIN

validator = RuntimeValidator(validation_mode)

# 4. Create model, dataloader, optimizer
model = create_model(cfg.model)
train_loader = create_dataloader(cfg.dataset, cache=cache, split="train")
val_loader = create_dataloader(cfg.dataset, cache=cache, split="val")
optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
loss_fn = torch.nn.CrossEntropyLoss()

# 5. Run validation
report = validator.validate_all_sync(model, train_loader, optimizer, loss_fn)
report.print()

if validation_mode == ValidationMode.CHECK_ONLY:
    sys.exit(0)

if validation_mode == ValidationMode.CHECK_AND_TRAIN and report.has_errors():
    print("Validation failed, aborting training")
    sys.exit(1)


# 6. Setup training engine
def train_step(engine, batch):
    model.train()
    optimizer.zero_grad()

    x, y = batch
    pred = model(x)
    loss = loss_fn(pred, y)

    loss.backward()
    optimizer.step()

    return {"loss": loss.item(), "pred": pred.detach(), "labels": y}


def val_step(engine, batch):
    model.eval()
    with torch.no_grad():
        x, y = batch
        pred = model(x)
        loss = loss_fn(pred, y)
    return {"loss": loss.item(), "pred": pred, "labels": y}


trainer = Engine(train_step)
evaluator = Engine(val_step)
Loss(loss_fn, output_transform=lambda o: (o["pred"], o["labels"])).attach(evaluator, "loss")
Accuracy(output_transform=lambda o: (o["pred"], o["labels"])).attach(evaluator, "acc")

# 7. Setup tracking
with Track.run(project=cfg.project, config=Conf.to_dict(cfg)) as run:
    # Validation every epoch
    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        evaluator.run(val_loader)
        metrics = evaluator.state.metrics
        print(f"epoch {engine.state.epoch}: val/loss {metrics['loss']:.4f} val/acc {metrics['acc']:.4f}")

        run.log({
            "train/loss": engine.state.output["loss"],
            "val/loss": metrics["loss"],
            "val/acc": metrics["acc"]
        }, step=engine.state.epoch)

    # Checkpointing
    checkpoint = Checkpoint(
        to_save={"model": model, "optimizer": optimizer},
        save_dir=cfg.train.checkpoint_dir,
        score_function=lambda e: evaluator.state.metrics["acc"],
        n_saved=3
    )
    trainer.on(Events.EPOCH_COMPLETED, checkpoint)

    # Early stopping
    early_stop = EarlyStopping(
        patience=10,
        score_function=lambda e: evaluator.state.metrics["acc"],
        trainer=trainer
    )
    evaluator.on(Events.EPOCH_COMPLETED, early_stop)

    # Run training
    trainer.run(train_loader, max_epochs=cfg.train.epochs)

    # Save final model
    model_artifact = Track.Artifact(f"{cfg.project}-final", type="model")
    torch.save(model.state_dict(), "final_model.pt")
    model_artifact.add_file("final_model.pt")
    run.log_artifact(model_artifact)

print("Training completed!")
cache.cleanup()
