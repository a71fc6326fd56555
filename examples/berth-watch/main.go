// berth-watch is an example of external tooling built on Berth's public NATS
// contract (docs/nats.md): it subscribes to lifecycle events and health
// transitions and prints one line for each.
//
//	scheduler nats-credential reader > reader.nk
//	go run ./examples/berth-watch --nats-url nats://127.0.0.1:4222 --nats-nkey reader.nk
//	2026-11-24T10:00:01Z event  demo  instance_started  7f3k2q9x  instance 7f3k2q9x started at 127.0.0.1:32802 (generation 1)
//	2026-11-24T10:00:02Z health demo  7f3k2q9x  unknown -> healthy  (1.2 ms)
//
// It uses only nats.go, nkeys and the message types of common/msg, which
// decode every v1 message, check its type and ignore fields added after it
// was written. With --nats-nkey it also checks each message's seal against
// the public keys in the credential's trust lines (docs/nats.md, Sealed
// records), as any tool that acts on what it reads should: events must be
// sealed by the scheduler, health transitions by healthd. A message that
// fails either check is reported on stderr and skipped: a consumer must
// never stop on one bad message.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func main() {
	url := flag.String("nats-url", nats.DefaultURL, "NATS server URL(s), comma separated")
	prefix := flag.String("prefix", "berth", "Berth's subject prefix")
	app := flag.String("app", "", "only this app (default: every app)")
	seed := flag.String("nats-nkey", "", "Berth's reader credential (scheduler nats-credential reader): its NATS nkey seed, and the roles' public keys that seals are checked against")
	flag.Parse()
	if err := run(*url, *prefix, *app, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "berth-watch:", err)
		os.Exit(1)
	}
}

func run(url, prefix, app, seed string) error {
	names, err := msg.NewNames(prefix)
	if err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	opts := []nats.Option{nats.Name("berth-watch"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { fmt.Fprintln(os.Stderr, "berth-watch: disconnected:", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { fmt.Fprintln(os.Stderr, "berth-watch: reconnected") })}
	var trust map[string][]nkeys.KeyPair
	if seed != "" {
		opt, err := nats.NkeyOptionFromSeed(seed)
		if err != nil {
			return fmt.Errorf("--nats-nkey: %w", err)
		}
		opts = append(opts, opt)
		if trust, err = loadTrust(seed); err != nil {
			return fmt.Errorf("--nats-nkey: %w", err)
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return err
	}
	defer nc.Drain()

	events, health := names.AllEvents(), names.AllHealth()
	if app != "" {
		events, health = names.AppEvents(app), names.HealthSubject(app, "*")
	}
	if _, err := nc.Subscribe(events, func(m *nats.Msg) { print(m, trust["scheduler"]) }); err != nil {
		return err
	}
	if _, err := nc.Subscribe(health, func(m *nats.Msg) { print(m, trust["healthd"]) }); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "berth-watch: watching %s and %s\n", events, health)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

func print(m *nats.Msg, owner []nkeys.KeyPair) {
	data := m.Data
	if owner != nil {
		var err error
		if data, err = open(m.Subject, data, owner); err != nil {
			fmt.Fprintf(os.Stderr, "berth-watch: skipping a message on %s: %v\n", m.Subject, err)
			return
		}
	}
	decoded, err := msg.Decode(data)
	if err != nil {
		fmt.Fprintf(os.Stderr, "berth-watch: skipping a message on %s: %v\n", m.Subject, err)
		return
	}
	now := time.Now().UTC().Format(time.RFC3339)
	switch v := decoded.(type) {
	case *msg.Event:
		fmt.Printf("%s event  %s  %s  %s  %s\n", now, v.App, v.Kind, dash(v.Instance), oneLine(v.Message))
	case *msg.HealthChange:
		line := fmt.Sprintf("%s health %s  %s  %s -> %s  (%.1f ms)", now, v.App, v.Instance, v.From, v.To, v.LatencyMS)
		if v.Failure != "" {
			line += fmt.Sprintf("  %s: %s", v.Failure, oneLine(v.Message))
		}
		fmt.Println(line)
	default:
		fmt.Fprintf(os.Stderr, "berth-watch: unexpected %T on %s\n", decoded, m.Subject)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a message on its line: messages are text from the system,
// but a terminal should never be fed newlines or escape sequences from it.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// loadTrust reads the "# berth-trust <role> <public key>" lines of a
// credential file.
func loadTrust(path string) (map[string][]nkeys.KeyPair, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	trust := map[string][]nkeys.KeyPair{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 || fields[0] != "#" || fields[1] != "berth-trust" {
			continue
		}
		kp, err := nkeys.FromPublicKey(fields[3])
		if err != nil {
			return nil, fmt.Errorf("trust line for %s: %w", fields[2], err)
		}
		trust[fields[2]] = append(trust[fields[2]], kp)
	}
	if len(trust["scheduler"]) == 0 || len(trust["healthd"]) == 0 {
		return nil, errors.New("no berth-trust lines for the scheduler and healthd: print the credential again with scheduler nats-credential reader")
	}
	return trust, sc.Err()
}

// open checks the seal that ends a message, {…,"seal":"<at>.<signature>"},
// and returns the object without it.
func open(subject string, data []byte, owner []nkeys.KeyPair) ([]byte, error) {
	i := bytes.LastIndex(data, []byte(`"seal":"`))
	if i < 1 || !bytes.HasSuffix(data, []byte(`"}`)) {
		return nil, errors.New("not sealed")
	}
	at, sig, ok := bytes.Cut(data[i+len(`"seal":"`):len(data)-2], []byte("."))
	rawSig, err := base64.RawURLEncoding.DecodeString(string(sig))
	if !ok || len(at) != 16 || err != nil {
		return nil, errors.New("malformed seal")
	}
	body := append(bytes.TrimSuffix(append([]byte(nil), data[:i]...), []byte(",")), '}')
	signed := fmt.Appendf(nil, "berth-seal-v1\nmsg\n%s\n\nmsg\n%s\n%s", subject, at, body)
	for _, kp := range owner {
		if kp.Verify(signed, rawSig) != nil {
			continue
		}
		// at is Unix nanoseconds: one of 2^63 or more, or more than 5
		// minutes ahead of this clock, is refused as Berth's daemons do.
		n, err := strconv.ParseUint(string(at), 16, 64)
		if err != nil || n > math.MaxInt64 || time.Unix(0, int64(n)).After(time.Now().Add(5*time.Minute)) {
			return nil, fmt.Errorf("sealed in the future (at %s)", at)
		}
		return body, nil
	}
	return nil, errors.New("seal does not verify against its owner's keys")
}
