"""ablate: take trained residual and plain networks apart.

Interventions are context managers that change a model inside a ``with`` block and restore it
exactly on exit::

    import ablate
    model = ablate.load("resnet110").model
    with ablate.delete(model, [10]):
        ...
"""

__version__ = "0.1.0"
