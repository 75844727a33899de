"""
The PostgreSQL the tests run is a real server, on loopback, not as root.
"""

import psycopg


def test_each_test_gets_its_own_empty_database_on_a_loopback_server(postgresql, pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        user = conn.execute("SELECT current_user").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        address = conn.execute("SELECT inet_server_addr()::text").fetchone()[0]
    assert user == "mailhub"
    assert tables == 0
    assert address.startswith("127.0.0.1")
    assert pg_dsn != postgresql.create_database()


def test_the_server_process_does_not_run_as_root(postgresql):
    with open(f"{postgresql.data}/postmaster.pid") as f:
        pid = int(f.readline())
    with open(f"/proc/{pid}/status") as f:
        uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    assert uid != 0
