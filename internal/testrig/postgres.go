package testrig

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const pgUser = "berth"

// pgServer is the one PostgreSQL server of this test binary.
type pgServer struct {
	bin  string // directory of initdb, postgres, psql
	dir  string // data, socket and log live here
	port int
	cmd  *exec.Cmd
	done chan struct{}       // closed when the postmaster has exited
	cred *syscall.Credential // non-nil when running as root
}

var (
	pgOnce   sync.Once
	pg       *pgServer
	pgErr    error
	pgDBSeq  atomic.Int64
	pgMu     sync.Mutex // guards pg against stopPostgres
	dbNameRe = regexp.MustCompile(`[^a-z0-9_]+`)
)

// PostgresBinDir returns the directory holding initdb, postgres and psql:
// the newest /usr/lib/postgresql/N/bin (Debian's layout), else the one of
// initdb on PATH. It returns "" when PostgreSQL is not installed.
func PostgresBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real)
		}
	}
	return ""
}

func pgVersion(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Postgres returns the URL of a fresh, empty database on the test binary's
// throwaway PostgreSQL server, which starts on first use on a random
// 127.0.0.1 port. The database is dropped when the test ends. The package
// must run its tests through Main.
func Postgres(t testing.TB) string {
	t.Helper()
	bin := PostgresBinDir()
	Require(t, bin != "", "PostgreSQL not found", "apt-get install postgresql")
	if !mainCalled.Load() {
		t.Fatal("testrig.Postgres needs TestMain to call testrig.Main(m), so the server stops when the tests end")
	}
	pgOnce.Do(func() { pg, pgErr = startPostgres(bin) })
	if pgErr != nil {
		t.Fatalf("start throwaway PostgreSQL: %v", pgErr)
	}
	name := fmt.Sprintf("t%d_%s", pgDBSeq.Add(1), dbNameRe.ReplaceAllString(strings.ToLower(t.Name()), "_"))
	if len(name) > 60 {
		name = name[:60]
	}
	if _, err := pg.psql("postgres", fmt.Sprintf(`CREATE DATABASE "%s"`, name)); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if _, err := pg.psql("postgres", fmt.Sprintf(`DROP DATABASE IF EXISTS "%s" WITH (FORCE)`, name)); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return pg.url(name)
}

// PSQL runs one SQL command with psql against the database at url (from
// Postgres) and returns its unaligned, tuples-only output.
func PSQL(t testing.TB, url, sql string) string {
	t.Helper()
	bin := PostgresBinDir()
	out, err := run(30*time.Second, nil, filepath.Join(bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql)
	if err != nil {
		t.Fatalf("psql: %v", err)
	}
	return strings.TrimSpace(out)
}

func (s *pgServer) url(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", pgUser, s.port, db)
}

func (s *pgServer) psql(db, sql string) (string, error) {
	return run(30*time.Second, nil, filepath.Join(s.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", s.url(db), "-c", sql)
}

// startPostgres runs initdb and the postmaster as the postgres user when
// this process is root (both refuse to run as root), with fsync off: the
// data is thrown away anyway.
func startPostgres(bin string) (*pgServer, error) {
	dir, err := os.MkdirTemp("", "berth-pg-")
	if err != nil {
		return nil, err
	}
	s := &pgServer{bin: bin, dir: dir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres user that the postgresql package creates: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	asPostgres := func(c *exec.Cmd) {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
		c.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
		c.Dir = dir
	}
	data := filepath.Join(dir, "data")
	if _, err := run(2*time.Minute, asPostgres, filepath.Join(bin, "initdb"),
		"-D", data, "-U", pgUser, "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
		return nil, fmt.Errorf("initdb: %w", err)
	}
	sock := filepath.Join(dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return nil, err
	}
	if s.cred != nil {
		if err := os.Chown(sock, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, err
		}
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a free port can be taken before the postmaster binds it
		if err := s.startPostmaster(data, sock, asPostgres); err != nil {
			lastErr = err
			continue
		}
		return s, nil
	}
	return nil, lastErr
}

func (s *pgServer) startPostmaster(data, sock string, asPostgres func(*exec.Cmd)) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.port = port
	logFile, err := os.Create(filepath.Join(s.dir, "postgres.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	if s.cred != nil {
		_ = logFile.Chown(int(s.cred.Uid), int(s.cred.Gid))
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", data, "-p", strconv.Itoa(s.port), "-k", sock,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB")
	asPostgres(cmd)
	// SIGQUIT (immediate shutdown) if this test binary dies without Main's cleanup.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			return fmt.Errorf("postgres exited during start: %s", tail(string(log), 2000))
		default:
		}
		if _, err := s.psql("postgres", "SELECT 1"); err == nil {
			s.cmd, s.done = cmd, exited
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return fmt.Errorf("postgres did not accept connections on 127.0.0.1:%d within 30s", s.port)
}

// stopPostgres stops the server, if one started, and removes its files.
func stopPostgres() {
	pgMu.Lock()
	defer pgMu.Unlock()
	if pg == nil || pg.cmd == nil {
		return
	}
	_ = pg.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-pg.done:
	case <-time.After(10 * time.Second):
		_ = pg.cmd.Process.Kill()
	}
	_ = os.RemoveAll(pg.dir)
	pg = nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
