// berth-watch is an example of external tooling built on Berth's public NATS
// contract (docs/nats.md): it subscribes to lifecycle events and health
// transitions and prints one line for each.
//
//	scheduler nats-credential reader > reader.nk
//	go run ./examples/berth-watch --nats-url nats://127.0.0.1:4222 --nats-nkey reader.nk
//	2026-11-24T10:00:01Z event  demo  instance_started  7f3k2q9x  instance 7f3k2q9x started at 127.0.0.1:32802 (generation 1)
//	2026-11-24T10:00:02Z health demo  7f3k2q9x  unknown -> healthy  (1.2 ms)
//
// It uses only nats.go and the message types of common/msg, which decode
// every v1 message, check its type and ignore fields added after it was
// written. A message that fails to decode is reported on stderr and
// skipped: a consumer must never stop on one bad message.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nats.go"
)

func main() {
	url := flag.String("nats-url", nats.DefaultURL, "NATS server URL(s), comma separated")
	prefix := flag.String("prefix", "berth", "Berth's subject prefix")
	app := flag.String("app", "", "only this app (default: every app)")
	seed := flag.String("nats-nkey", "", "file holding the NATS nkey seed of Berth's reader role (scheduler nats-credential reader)")
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
	if seed != "" {
		opt, err := nats.NkeyOptionFromSeed(seed)
		if err != nil {
			return fmt.Errorf("--nats-nkey: %w", err)
		}
		opts = append(opts, opt)
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
	if _, err := nc.Subscribe(events, func(m *nats.Msg) { print(m, names) }); err != nil {
		return err
	}
	if _, err := nc.Subscribe(health, func(m *nats.Msg) { print(m, names) }); err != nil {
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

func print(m *nats.Msg, names msg.Names) {
	decoded, err := msg.Decode(m.Data)
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
