"""
Outbound mail: the durable queue under C{DATA/queue/}, MX routing,
delivery over ESMTP with retries, and bounces (RFC 3464 DSNs).

 - L{twisted_mailhub.queue.component}: the hub component (options, install)
 - L{twisted_mailhub.queue.relay}: the queue's scheduler and outcomes
 - L{twisted_mailhub.queue.storage}: the queue's files
 - L{twisted_mailhub.queue.mx}: where mail for a domain goes
 - L{twisted_mailhub.queue.client}: the ESMTP client
 - L{twisted_mailhub.queue.dsn}: delivery status notifications
 - L{twisted_mailhub.queue.admin}: C{python -m twisted_mailhub.queue}
"""
