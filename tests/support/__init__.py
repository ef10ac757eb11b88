"""What the tests share: servers, apps run as subprocesses, and helpers (imported as `support.*`).

`tests/` is on `sys.path` (pytest's `pythonpath`; subprocesses get it through `PYTHONPATH` or their
working directory), so every module here is imported under one name, `support.<module>`, in the test
process and in every subprocess alike: tools recorded as `support.worker_app:charge` resolve in both.
"""
