# Start Debian's PostgreSQL cluster on 127.0.0.1 and export DATABASE_URI (sourced by .ci/run).
ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | grep -q "^$ver main"; then
  pg_createcluster "$ver" main >/dev/null
fi
pg_ctlcluster "$ver" main start 2>/dev/null || true
for _ in $(seq 1 50); do
  pg_isready -h 127.0.0.1 -q && break
  sleep 0.2
done
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='sidecar_test'\" | grep -q 1 || psql -q -c 'CREATE DATABASE sidecar_test'" >/dev/null
export DATABASE_URI="postgresql://postgres:postgres@127.0.0.1:5432/sidecar_test"
echo "DATABASE_URI=$DATABASE_URI"
