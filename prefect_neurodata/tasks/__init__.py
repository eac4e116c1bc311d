"""Retryable Prefect tasks over the clients: one batch of work per task run.

Tasks take credential blocks (or their saved names), never live clients or secrets, retry only
transient failures (``retries.task_options``: one classifier, one retry budget), use no result
cache for writes and carry tags (``docdb``, ``write``, ``rds``, ``s3``, ``cave``) for
concurrency limits, e.g.
``prefect concurrency-limit create docdb 8``.

Modules, one per platform: ``docdb`` (DocDB REST API), ``s3`` (asset folders), ``sync``
(the metadata-sync batch), ``rds`` (tables), ``cave``. Import tasks from their module; this
package imports nothing eagerly, so one platform's dependencies never load for another's.
"""
