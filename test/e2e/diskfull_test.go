package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestDiskFull runs the server on a small tmpfs, fills it, and checks that messages are refused
// with 452 4.3.1 (never acknowledged and lost), that the server recovers when space returns, and
// that every acknowledged message is delivered whole.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("disk-full test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the disk-full test needs root to mount a tmpfs")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	mnt := filepath.Join(dir, "small")
	os.Mkdir(mnt, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", mnt).Run()

	addr := freePort(t)
	cfg := writeConfig(t, mnt, addr, "")
	b, _ := os.ReadFile(cfg)
	b = bytes.Replace(b, []byte("[local]"), []byte("[queue]\nretry_intervals = [\"1s\"]\n[local]"), 1)
	os.WriteFile(cfg, b, 0o644)
	srv := start(t, mnt, cfg, addr)
	defer srv.stop()
	mailbox := filepath.Join(mnt, "data", "mail", "crash.test", "u")

	// Prove the path works, then fill the file system.
	s, err := dialSender(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if code, err := s.send("u@crash.test", "before", 100); code != 250 {
		t.Fatalf("first message: %d %v", code, err)
	}
	filler := filepath.Join(mnt, "filler")
	fillDisk(t, filler)

	acked := []string{"before"}
	full := 0
	for i := 0; i < 300 && full < 3; i++ {
		tok := "during-" + strconv.Itoa(i)
		code, err := s.send("u@crash.test", tok, 100)
		switch {
		case code == 250:
			acked = append(acked, tok)
		case code == 452:
			full++
		default:
			t.Fatalf("message %d: reply %d (%v); want 250 or 452\n%s", i, code, err, srv.logs.String())
		}
		if err != nil && code != 452 {
			break
		}
	}
	if full == 0 {
		t.Fatalf("the full disk was never reported (452)\n%s", srv.logs.String())
	}
	// Space returns: the server accepts again and delivers everything it acknowledged.
	os.Remove(filler)
	s.close()
	s, err = dialSender(addr)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := s.send("u@crash.test", "after", 100); code != 250 {
		t.Fatalf("after freeing space: %d %v\n%s", code, err, srv.logs.String())
	}
	acked = append(acked, "after")
	deadline := time.Now().Add(30 * time.Second)
	var seen map[string]int
	for time.Now().Before(deadline) {
		seen = tokensInMaildir(t, mailbox)
		missing := 0
		for _, tok := range acked {
			if seen[tok] == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, tok := range acked {
		if seen[tok] != 1 {
			t.Errorf("acknowledged message %s delivered %d times", tok, seen[tok])
		}
	}
	t.Logf("%d acknowledged, %d refused with 452 while full", len(acked), full)
}

func fillDisk(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}
