package nginx

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Confirm polls url every interval until its body, trimmed of space, equals
// want, proving that the reloaded config is the one serving. It returns the
// last thing it saw in its error when ctx ends first.
func Confirm(ctx context.Context, client *http.Client, url, want string, interval time.Duration) error {
	last := "no answer"
	for {
		got, err := fetch(ctx, client, url)
		if err == nil && got == want {
			return nil
		}
		switch {
		case err == nil:
			last = fmt.Sprintf("generation %q", got)
		case ctx.Err() == nil:
			last = err.Error()
			// A request cut short by the deadline itself says nothing about
			// nginx: keep the last real observation for the error.
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("confirm generation %q at %s: %w (last: %s)", want, url, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// Served returns the generation the status listener at url reports.
func Served(ctx context.Context, client *http.Client, url string) (string, error) {
	return fetch(ctx, client, url)
}

// Status is the generation endpoint of nginx's status listener: which
// config generation nginx serves. It is safe for concurrent use.
type Status struct {
	url    string
	client *http.Client
}

// NewStatus returns the generation endpoint of the status listener at
// listen (host:port), asked with a one-second timeout per request.
func NewStatus(listen string) *Status {
	return &Status{url: "http://" + listen + "/berth/generation", client: &http.Client{Timeout: time.Second}}
}

// Generation returns the generation nginx serves: 0 when it reports none
// or something that is not one.
func (s *Status) Generation(ctx context.Context) (uint64, error) {
	got, err := fetch(ctx, s.client, s.url)
	if err != nil {
		return 0, err
	}
	gen, err := strconv.ParseUint(got, 10, 64)
	if err != nil {
		return 0, nil
	}
	return gen, nil
}

// Confirm polls every 10 ms until nginx serves gen (Confirm).
func (s *Status) Confirm(ctx context.Context, gen uint64) error {
	return Confirm(ctx, s.client, s.url, strconv.FormatUint(gen, 10), 10*time.Millisecond)
}

func fetch(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return strings.TrimSpace(string(body)), nil
}
