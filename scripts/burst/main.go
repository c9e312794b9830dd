// burst starts N plugin processes at once, as a Nomad client does on a
// burst of task starts: one goroutine per process, the command run
// directly with the given environment, SIGTERM at the timeout and SIGKILL
// 2 s later (client/commonplugins). It prints one JSON object: the wall
// time from the first start to the last exit, the processes' CPU, and
// each one's stdout, exit code and whether it was stopped.
//
//	burst -n 100 -timeout 10s -env env.json -- /path/to/plugin fetch path
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

type run struct {
	Stdout     string  `json:"stdout"`
	Code       int     `json:"code"`
	Terminated bool    `json:"terminated"`
	WallMs     float64 `json:"wall_ms"`
}

type summary struct {
	WallMs float64 `json:"wall_ms"`
	CPUMs  float64 `json:"cpu_ms"`
	Runs   []run   `json:"runs"`
}

func main() {
	n := flag.Int("n", 10, "processes to start at once")
	timeout := flag.Duration("timeout", 10*time.Second, "SIGTERM after this long (Nomad 1.11.0-1.11.3: 10 s)")
	envFile := flag.String("env", "", "a JSON object: the environment of each process")
	flag.Parse()
	argv := flag.Args()
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "burst: no command")
		os.Exit(2)
	}
	env := []string{}
	if *envFile != "" {
		data, err := os.ReadFile(*envFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "burst:", err)
			os.Exit(2)
		}
		var m map[string]string
		if err := json.Unmarshal(data, &m); err != nil {
			fmt.Fprintln(os.Stderr, "burst:", err)
			os.Exit(2)
		}
		for k, v := range m {
			env = append(env, k+"="+v)
		}
	}
	runs := make([]run, *n)
	cpu := make([]float64, *n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			began := time.Now()
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Env = env
			var out bytes.Buffer
			cmd.Stdout = &out
			if err := cmd.Start(); err != nil {
				runs[i] = run{Code: -1, Stdout: err.Error()}
				return
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			terminated := false
			select {
			case <-done:
			case <-time.After(*timeout):
				terminated = true
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-done:
				case <-time.After(2 * time.Second):
					cmd.Process.Kill()
					<-done
				}
			}
			if usage, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				cpu[i] = float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e6
			}
			runs[i] = run{
				Stdout:     out.String(),
				Code:       cmd.ProcessState.ExitCode(),
				Terminated: terminated,
				WallMs:     float64(time.Since(began).Microseconds()) / 1000,
			}
		}(i)
	}
	wg.Wait()
	total := 0.0
	for _, c := range cpu {
		total += c
	}
	s := summary{WallMs: float64(time.Since(start).Microseconds()) / 1000, CPUMs: total, Runs: runs}
	json.NewEncoder(os.Stdout).Encode(s)
}
