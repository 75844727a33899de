"""
What several hubs on one PostgreSQL database share besides the mail store
(which is L{twisted_mailhub.store.postgresql}): accounts (C{--auth
postgresql:DSN}), the login throttle's counters, the tables' schema and its
version, and the database helper they use.

 - L{twisted_mailhub.cluster.schema}: the tables of this package, the outbound
   queue and the FTP file system, and their version
 - L{twisted_mailhub.cluster.database}: psycopg connections from threads
 - L{twisted_mailhub.cluster.accounts}: accounts in a table
 - L{twisted_mailhub.cluster.throttle}: login failures counted across hubs
"""
