"""Data-parallel training and sharded activation extraction on ``torch.distributed``.

Launch any ``msae train`` config on several processes with ``torchrun``::

    torchrun --nproc-per-node 2 -m msae_plugin train CONFIG

Modules: :mod:`~.context` (who this process is; joining the group with a timeout),
:mod:`~.collectives` (gradient averaging inside backward, guarded reductions),
:mod:`~.trainer` (SAELens's ``SAETrainer`` kept in lock-step with a one-process run),
:mod:`~.sharding` (each rank's strided share of the image stream), :mod:`~.cache` (one
activation sub-cache per rank, an index written last) and :mod:`~.language_model`
(``train_language_model``: SAELens's own ``LanguageModelSAERunnerConfig`` under torchrun). See
docs/distributed.md.
"""
