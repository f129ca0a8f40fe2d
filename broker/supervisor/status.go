package supervisor

import (
	"errors"
	"time"
)

// State is a worker's lifecycle state.
type State string

// Worker states.
const (
	StateStarting   State = "starting"    // building the consumer and connecting
	StateRunning    State = "running"     // connected and consuming
	StateBackingOff State = "backing-off" // failed; waiting to retry
	StateStopped    State = "stopped"
)

// States lists every worker state, for metrics.
var States = []State{StateStarting, StateRunning, StateBackingOff, StateStopped}

// WorkerStatus is the live state of one worker.
type WorkerStatus struct {
	Worker        int        `json:"worker"`
	State         State      `json:"state"`
	LastError     string     `json:"last_error,omitempty"`
	LastErrorAt   *time.Time `json:"last_error_at,omitempty"`
	LastMessageAt *time.Time `json:"last_message_at,omitempty"`
	// Received counts settled messages: Dispatched + Duplicates + DeadLettered.
	Received     int64 `json:"received"`
	Dispatched   int64 `json:"dispatched"`
	Duplicates   int64 `json:"duplicates"`
	DeadLettered int64 `json:"dead_lettered"`
	Failures     int64 `json:"failures"`
	// Lag is how many messages wait on the broker for this worker, where the
	// broker can tell (Kafka lag, SQS backlog, AMQP queue depth).
	Lag *int64 `json:"lag,omitempty"`
	// Partitions maps each partition this worker holds to its lag (Kafka).
	Partitions map[int]int64 `json:"partitions,omitempty"`
	// Note explains a state worth knowing, such as a worker that idles
	// because the source has fewer partitions than workers.
	Note string `json:"note,omitempty"`
}

// SourceStatus is the live state of a source's workers.
type SourceStatus struct {
	SourceID  string         `json:"source_id"`
	ProjectID string         `json:"project_id"`
	Broker    string         `json:"broker"`
	State     string         `json:"state"` // running, degraded, starting or stopped
	Since     time.Time      `json:"since"` // when the current configuration started
	Workers   []WorkerStatus `json:"workers"`
}

// ErrNotRunning is returned by Status for a source that has no workers here
// (not a pub_sub source, disabled, deleted, or not yet reconciled).
var ErrNotRunning = errors.New("source is not running")

// Status returns the live state of a source's workers.
func (s *Supervisor) Status(sourceID string) (SourceStatus, error) {
	s.mu.Lock()
	r, ok := s.running[sourceID]
	s.mu.Unlock()
	if !ok {
		return SourceStatus{SourceID: sourceID, State: string(StateStopped), Workers: []WorkerStatus{}}, ErrNotRunning
	}
	st := SourceStatus{
		SourceID:  sourceID,
		ProjectID: r.src.ProjectID,
		Broker:    r.src.PubSub.Type,
		Since:     r.started.UTC(),
	}
	counts := make(map[State]int)
	for _, w := range r.workers {
		ws := w.snapshot()
		counts[ws.State]++
		st.Workers = append(st.Workers, ws)
	}
	switch n := len(r.workers); {
	case counts[StateRunning] == n:
		st.State = string(StateRunning)
	case counts[StateStarting] == n:
		st.State = string(StateStarting)
	default:
		st.State = "degraded"
	}
	return st, nil
}

func (w *worker) transient(err error) {
	w.fail(err)
	w.metrics.failures.Inc()
}

func (w *worker) settled(written, dups, dead int, at time.Time) {
	at = at.UTC()
	received := written + dups + dead
	w.mu.Lock()
	w.status.Received += int64(received)
	w.status.Dispatched += int64(written)
	w.status.Duplicates += int64(dups)
	w.status.DeadLettered += int64(dead)
	w.status.LastMessageAt = &at
	if w.status.State != StateRunning {
		w.mu.Unlock()
		w.setState(StateRunning)
	} else {
		w.mu.Unlock()
	}
	w.metrics.received.Add(float64(received))
	w.metrics.dispatched.Add(float64(written))
	w.metrics.duplicates.Add(float64(dups))
}
