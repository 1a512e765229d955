use std::collections::BTreeMap;

use executors::LogChunk;
use pipelines::{Image, Isolation, PlannedJob, PlannedStep, Resources};

use super::*;

fn plan() -> Plan {
    let step = |name: &str, coe: bool| PlannedStep {
        name: name.into(),
        run: String::new(),
        shell: pipelines::Shell::Sh,
        image: Image::Host,
        isolation: Isolation::Container,
        env: BTreeMap::new(),
        workdir: "/workspace".into(),
        timeout: Duration::from_secs(1),
        network: pipelines::Network::None,
        resources: Resources::default(),
        continue_on_error: coe,
        secrets: Vec::new(),
    };
    let job = |id: &str, steps| PlannedJob {
        id: id.into(),
        name: id.into(),
        matrix: BTreeMap::new(),
        needs: Vec::new(),
        skipped: None,
        allow_failure: false,
        retry: 0,
        timeout: Duration::from_secs(1),
        steps,
    };
    Plan {
        name: "p".into(),
        jobs: vec![
            job("build", vec![step("compile", false), step("lint", true)]),
            job("test", vec![step("unit", false), step("e2e", false)]),
            job("deploy", vec![step("ship", false)]),
        ],
    }
}

const PLAIN: Style = Style {
    color: false,
    timestamps: false,
};

fn out(chunk: &str, stream: Stream) -> JobEvent {
    JobEvent::Output {
        index: 0,
        chunk: LogChunk::new(stream, chunk.as_bytes()),
    }
}

fn result(code: i32, ms: u64) -> StepResult {
    StepResult {
        exit_code: Some(code),
        duration: Duration::from_millis(ms),
        ..StepResult::default()
    }
}

#[test]
fn lines_are_prefixed_by_job_and_assembled_across_chunks() {
    let p = plan();
    let mut pr = Printer::new(Vec::new(), PLAIN, &p);
    let ev = |job, event| Message::Event { job, event };
    pr.handle(ev(
        0,
        JobEvent::StepStarted {
            index: 0,
            name: "compile".into(),
            sandbox: "container (x), image host".into(),
        },
    ));
    pr.handle(ev(0, out("hel", Stream::Stdout)));
    pr.handle(ev(1, out("other job\n", Stream::Stdout)));
    pr.handle(ev(0, out("lo\nwor", Stream::Stdout)));
    pr.handle(ev(0, out("oops\n", Stream::Stderr)));
    pr.handle(ev(
        0,
        JobEvent::StepFinished {
            index: 0,
            result: result(0, 1500),
        },
    ));
    let text = String::from_utf8(pr.into_inner()).unwrap();
    assert_eq!(
        text,
        "build  ▶ compile · container (x), image host\n\
         test   │ other job\n\
         build  │ hello\n\
         build  │ oops\n\
         build  │ wor\n\
         build  ✓ compile · success in 1.50s\n"
    );
    assert!(!text.contains('\x1b'));
}

#[test]
fn colours_and_timestamps_only_when_asked() {
    let p = plan();
    let style = Style {
        color: true,
        timestamps: true,
    };
    let mut pr = Printer::new(Vec::new(), style, &p);
    pr.handle(Message::Event {
        job: 0,
        event: JobEvent::StepStarted {
            index: 0,
            name: "compile".into(),
            sandbox: "s".into(),
        },
    });
    let later = SystemTime::now() + Duration::from_millis(61_250);
    pr.handle(Message::Event {
        job: 0,
        event: JobEvent::Output {
            index: 0,
            chunk: LogChunk {
                stream: Stream::Stdout,
                timestamp: later,
                data: b"x\n".to_vec(),
            },
        },
    });
    pr.handle(Message::Info {
        job: 0,
        text: "outside a step".into(),
    });
    let text = String::from_utf8(pr.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(text.contains('\x1b'), "{text:?}");
    assert!(lines[0].starts_with("\x1b[2m00:00.00"), "{text:?}");
    // Time since the step started (give or take the moment the header was printed).
    assert!(lines[1].starts_with("\x1b[2m01:01.2"), "{text:?}");
    assert!(lines[2].starts_with("          "), "{text:?}");
}

#[test]
fn elapsed_formats_minutes_seconds_millis() {
    assert_eq!(elapsed(Duration::from_millis(42)), "00:00.042");
    assert_eq!(elapsed(Duration::from_millis(3_723_042)), "62:03.042");
}

#[test]
fn summary_has_a_row_per_step_and_says_what_did_not_run() {
    let p = plan();
    let outcomes = vec![
        JobOutcome {
            status: JobStatus::Success,
            results: vec![result(0, 1200), result(3, 100)],
            attempts: 1,
            reason: None,
        },
        JobOutcome {
            status: JobStatus::Failed,
            results: vec![result(1, 50)],
            attempts: 2,
            reason: None,
        },
        JobOutcome {
            status: JobStatus::Skipped,
            results: Vec::new(),
            attempts: 0,
            reason: Some("needs 'test', which failed".into()),
        },
    ];
    let s = summary(&p, &outcomes, PLAIN, Duration::from_secs(75));
    let expected = "
JOB               STEP     STATUS                               DURATION
build             compile  success                              1.20s
build             lint     failed (exit 3), allowed             0.10s
test (attempt 2)  unit     failed (exit 1)                      0.05s
test (attempt 2)  e2e      not run                              -
deploy            -        skipped: needs 'test', which failed  -
3 jobs: 1 succeeded, 1 failed, 1 skipped in 1m15s
";
    assert_eq!(s, expected, "\n{s}");
}
