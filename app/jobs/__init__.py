"""The Income Clarity domain: the job handlers and what they talk to.

Handlers, one module per queue (`sync`, `email`, `webhook`, `notifications`, `cleanup`), are
declared with `worker.registry.task` and registered with the queue core through the
`clarity.task_modules` entry points in pyproject.toml: the core imports them by that name,
never the other way round. Beside them: their settings (`settings`), the aggregator client
(`aggregator`), the mailer and its templates (`mailer`, `templates/email`) and webhook
signature checks (`webhook_signatures`). The database they write is `app.db`.

What producers need to know about these jobs (sync types and priorities, the email
idempotency key, the webhook payload) is in `app.contracts`, which imports none of this.
"""
