"""A typical PyTorch Ignite training script, in the shape of Ignite's quick start: a trainer, two
evaluators run from sync EPOCH_COMPLETED handlers, Accuracy and Loss, early stopping, and a
top-level ``trainer.run``. Written for Ignite; ``tests/engine/test_scripts.py`` runs it as it is
under Ignite and with only its imports changed under aiotrain, and compares what they print.
"""

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)


gen = torch.Generator().manual_seed(1)
centers = torch.randn(4, 8, generator=gen) * 2


def blobs(n, generator):
    """Four Gaussian blobs in eight dimensions."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    return centers[labels] + torch.randn(n, 8, generator=generator), labels


train_loader = DataLoader(TensorDataset(*blobs(512, gen)), batch_size=32, shuffle=True)
val_loader = DataLoader(TensorDataset(*blobs(256, gen)), batch_size=64)

model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
criterion = nn.CrossEntropyLoss()


def train_step(engine, batch):
    model.train()
    optimizer.zero_grad()
    x, y = batch
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def validation_step(engine, batch):
    model.eval()
    with torch.no_grad():
        x, y = batch
        return model(x), y


trainer = Engine(train_step)
train_evaluator = Engine(validation_step)
val_evaluator = Engine(validation_step)

for evaluator in (train_evaluator, val_evaluator):
    Accuracy().attach(evaluator, "accuracy")
    Loss(criterion).attach(evaluator, "loss")


@trainer.on(Events.ITERATION_COMPLETED(every=8))
def log_training_loss(engine):
    print(f"Epoch[{engine.state.epoch}], Iter[{engine.state.iteration}] Loss: {engine.state.output:.4f}")


@trainer.on(Events.EPOCH_COMPLETED)
def log_training_results(trainer):
    train_evaluator.run(train_loader)
    metrics = train_evaluator.state.metrics
    print(f"Training Results - Epoch[{trainer.state.epoch}] "
          f"Avg accuracy: {metrics['accuracy']:.4f} Avg loss: {metrics['loss']:.4f}")


@trainer.on(Events.EPOCH_COMPLETED)
def log_validation_results(trainer):
    val_evaluator.run(val_loader)
    metrics = val_evaluator.state.metrics
    print(f"Validation Results - Epoch[{trainer.state.epoch}] "
          f"Avg accuracy: {metrics['accuracy']:.4f} Avg loss: {metrics['loss']:.4f}")


def score_function(engine):
    return engine.state.metrics["accuracy"]


val_evaluator.add_event_handler(
    Events.COMPLETED, EarlyStopping(patience=2, score_function=score_function, trainer=trainer))

state = trainer.run(train_loader, max_epochs=4)
print(f"Done: {state.epoch} epochs, {state.iteration} iterations")
