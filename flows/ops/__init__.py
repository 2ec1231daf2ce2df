"""The ops wing: the ``op`` flow (request, dispatch, resume) and the stage runners of each kind of
operation (map, label, pyramid, features). What an op is comes from :mod:`tierflow.tasks.ops.registry`."""
