"""What both trainers share, one module per part:

  distributed   the process's device and group (torchrun or one process), the device line, DDP wrapping
  loop          Run (the bookkeeping each trainer's loop calls once per step), the train loader and its
                epoch sampler, data helpers, logging
  checkpoints   save, list, read and resume from step_*.pt, every rank's RNG states
  stopping      stop signals, the loss guard, their exit statuses
  cli           the trainers' command line
"""
