//! The student's page in a real browser: Debian's chromium, headless at a phone's size, driven
//! through chromedriver. Two students on two pages: one takes a course's last seat and sees it
//! provisionally, then confirmed; the other sees the course full, joins its waitlist and is
//! promoted live when the first drops. Each step leaves a screenshot in the test's log
//! directory, under `browser/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use seatrush_core::domain::CourseSettings;

use crate::gateway::{config, start, token};
use crate::helpers::TestEnv;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show something: far above the second or two it takes, and
/// bounded, so a broken page fails the test rather than hanging it.
const PAGE_WAIT: Duration = Duration::from_secs(30);
/// How often the page is looked at while waiting.
const POLL: Duration = Duration::from_millis(100);
/// A phone's viewport (CSS pixels), so the layout checked is the one most students see.
const PHONE: (u32, u32) = (412, 915);

/// Fails, rather than skips, when the browser is missing: a test that passes without running
/// would hide a broken page.
fn require_browser() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: run scripts/test.sh, which installs Debian's chromium and \
             chromium-driver packages (or apt-get install chromium chromium-driver)"
        );
    }
}

/// A chromedriver process of this test. It is killed by its pid when this is dropped, so a
/// failing test leaves no driver behind (tokio's `kill_on_drop`).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver on a port the system picks on loopback, and waits for it to say which.
    async fn start(log_dir: &Path) -> Self {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg(format!(
                "--log-path={}",
                log_dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let stdout = child.stdout.take().expect("chromedriver's stdout");
        let mut lines = BufReader::new(stdout).lines();
        let said = tokio::time::timeout(PAGE_WAIT, async {
            let mut said = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let port = line
                    .split_once("started successfully on port ")
                    .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok());
                said.push(line);
                if let Some(port) = port {
                    return Ok(port);
                }
            }
            Err(said)
        })
        .await;
        let port = match said {
            Ok(Ok(port)) => port,
            Ok(Err(said)) => panic!("chromedriver exited before it listened: {said:?}"),
            Err(_) => panic!("chromedriver did not listen within {PAGE_WAIT:?}"),
        };
        // The driver keeps writing to its stdout now and then; a pipe nobody reads would fill
        // up and stall it, so the rest goes to a file.
        let mut rest = tokio::fs::File::create(log_dir.join("chromedriver.out"))
            .await
            .expect("chromedriver's output file");
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = rest.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless chromium at a phone's size, with a profile of its own under `profile`.
    async fn browser(&self, profile: &Path) -> Client {
        std::fs::create_dir_all(profile).expect("a profile directory");
        let mut capabilities = fantoccini::wd::Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    // Over a pipe the browser exits when the driver does, even when the
                    // driver is killed: a failing test leaves no browser behind.
                    "--remote-debugging-pipe",
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--lang=en-US",
                    format!("--window-size={},{}", PHONE.0, PHONE.1),
                    format!("--user-data-dir={}", profile.display()),
                ],
                // A headless window is at least 500 pixels wide whatever --window-size says;
                // emulating the phone's screen gives the page the phone's viewport, and the
                // screenshots its size.
                "mobileEmulation": {
                    "deviceMetrics": {
                        "width": PHONE.0,
                        "height": PHONE.1,
                        "pixelRatio": 1.0,
                        "mobile": true,
                        "touch": true,
                    },
                },
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a chromium session through chromedriver: {e}"))
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("chromedriver stops");
    }
}

/// What one course's row on the page shows.
#[derive(Debug, Deserialize)]
struct Row {
    seats_left: String,
    waitlist: String,
    state: String,
    status: String,
    enroll_disabled: bool,
}

/// What the page shows that the test reads: one course's row, the answers' log, the connection
/// indicator and who is signed in.
#[derive(Debug, Deserialize)]
struct Seen {
    row: Option<Row>,
    log: Vec<String>,
    live: String,
    whoami: String,
    /// Set on the page's window by the test: still there means the page was not reloaded.
    marker: bool,
}

const READ_PAGE: &str = r#"
const [course] = arguments;
const text = (el) => (el ? el.textContent.trim() : '');
const row = document.querySelector(`[data-course="${course}"]`);
const status = row && row.querySelector('.my-status');
return {
  row: row && {
    seats_left: text(row.querySelector('.seats-left')),
    waitlist: text(row.querySelector('.waitlist')),
    state: status.dataset.state,
    status: text(status),
    enroll_disabled: row.querySelector('button.enroll').disabled,
  },
  log: [...document.querySelectorAll('#log li')].map(text),
  live: text(document.getElementById('live')),
  whoami: text(document.getElementById('whoami')),
  marker: window.seatrushTestMarker === true,
};
"#;

/// One student's page.
struct Page {
    client: Client,
    student: &'static str,
    course: String,
    shots: PathBuf,
}

impl Page {
    async fn read(&self) -> Seen {
        let value = self
            .client
            .execute(READ_PAGE, vec![Value::from(self.course.as_str())])
            .await
            .unwrap_or_else(|e| panic!("{}'s page could not be read: {e}", self.student));
        serde_json::from_value(value).expect("the page's state")
    }

    /// Polls the page until `done` holds, for at most `PAGE_WAIT`; on failure keeps a
    /// screenshot and says what the page showed last.
    async fn until(&self, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let seen = self.read().await;
            if done(&seen) {
                return seen;
            }
            if Instant::now() >= deadline {
                let file = format!("failed-{}.png", self.student);
                self.shot(&file).await;
                panic!(
                    "{}'s page: {what}: not within {PAGE_WAIT:?}; it showed {seen:#?} \
                     (screenshot {})",
                    self.student,
                    self.shots.join(&file).display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn until_row(&self, what: &str, done: impl Fn(&Row) -> bool) -> Row {
        self.until(what, |s| s.row.as_ref().is_some_and(&done))
            .await
            .row
            .expect("the course's row")
    }

    async fn shot(&self, name: &str) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("a screenshot of {}'s page: {e}", self.student));
        std::fs::write(self.shots.join(name), png).expect("the screenshot is written");
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}'s page has no {css}: {e}", self.student))
    }

    async fn button(&self, class: &str) -> fantoccini::elements::Element {
        self.find(&format!("[data-course=\"{}\"] button.{class}", self.course))
            .await
    }

    async fn open(&self, base: &str) {
        self.client.goto(base).await.expect("the page loads");
        // The page's own script writes nothing here; the flag only tells a reload apart.
        self.client
            .execute("window.seatrushTestMarker = true;", vec![])
            .await
            .expect("the marker is set");
    }

    async fn signed_in(&self) -> Seen {
        let expected = format!("Signed in as {}", self.student);
        self.until(
            "signed in, the event stream live and the course listed",
            |s| s.whoami == expected && s.live == "live" && s.row.is_some(),
        )
        .await
    }

    /// Whether the page lays out within a phone's width: nothing wider than the viewport, so
    /// nobody has to scroll sideways.
    async fn fits_the_width(&self) {
        let widths = self
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .expect("the page's widths");
        let (scroll, inner) = (widths[0].as_u64(), widths[1].as_u64());
        assert!(
            scroll.is_some() && scroll <= inner,
            "{}'s page is wider than the phone's viewport: {widths}",
            self.student
        );
    }

    async fn close(self) {
        self.client.close().await.expect("the browser session ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_students_on_the_page_take_the_last_seat_wait_and_are_promoted_live() {
    require_browser();
    let mut env = TestEnv::new().await;
    // One seat of two already taken (below), a waitlist, and another course beside it.
    let course = env
        .add_courses_with(
            "WEB",
            1,
            CourseSettings {
                capacity: 2,
                waitlist: 3,
                ..CourseSettings::default()
            },
        )
        .await
        .remove(0);
    env.add_courses_with(
        "ART",
        1,
        CourseSettings {
            capacity: 30,
            waitlist: 0,
            ..CourseSettings::default()
        },
    )
    .await;
    let course = course.as_str().to_owned();
    // The worker waits a little before each commit, as it does under load, so the provisional
    // answer reliably reaches the page before the final one: the test checks the page shows
    // both stages, which a commit within a millisecond or two would make a race.
    let mut worker = env.worker_config();
    worker.batch_linger = Duration::from_millis(300);
    env.start_worker(worker).await;
    let mut settings = config(&env, &env.amqp_url);
    settings.auth.dev_issuer = true;
    let (gateway, api) = start(settings).await;
    let taken = api
        .post(
            &token("s0"),
            Some("k-first-seat"),
            &[("prefer", "wait=20")],
            json!({"action": "enroll", "course_id": course}),
        )
        .await;
    assert_eq!(
        taken.body["answer"]["outcome"], "enrolled",
        "{}",
        taken.body
    );

    let shots = env.log_dir().join("browser");
    std::fs::create_dir_all(&shots).expect("the screenshots' directory");
    let profiles = env.log_dir().join("chromium");
    let driver = Driver::start(&env.log_dir()).await;
    let first = Page {
        client: driver.browser(&profiles.join("s1")).await,
        student: "s1",
        course: course.clone(),
        shots: shots.clone(),
    };
    let second = Page {
        client: driver.browser(&profiles.join("s2")).await,
        student: "s2",
        course: course.clone(),
        shots: shots.clone(),
    };

    // s1 signs in with the development issuer.
    first.open(&api.base).await;
    let dev = first.find("#dev").await;
    let shown = Instant::now() + PAGE_WAIT;
    while !dev.is_displayed().await.expect("#dev") {
        assert!(
            Instant::now() < shown,
            "the development issuer's fields never showed, though /v1/config says it is on"
        );
        tokio::time::sleep(POLL).await;
    }
    first.fits_the_width().await;
    first.shot("00-sign-in.png").await;
    first
        .find("#student-id")
        .await
        .send_keys("s1")
        .await
        .expect("typing the student id");
    first
        .find("#dev-signin")
        .await
        .click()
        .await
        .expect("signing in");
    first.signed_in().await;
    let row = first
        .until_row("one seat left", |r| r.seats_left == "1 of 2 seats left")
        .await;
    assert_eq!((row.state.as_str(), row.status.as_str()), ("none", "none"));
    first.fits_the_width().await;
    first.shot("01-signed-in.png").await;

    // The answers' region is announced to screen readers as answers arrive.
    let log = first.find("#log").await;
    assert_eq!(
        log.attr("aria-live").await.expect("#log").as_deref(),
        Some("polite")
    );

    // s1 enrolls by keyboard alone: Tab from where sign-in left the focus to the course's
    // Enroll button (a real, focusable <button>), then Enter.
    let enroll = first.button("enroll").await;
    assert_eq!(enroll.tag_name().await.expect("a tag"), "button");
    let label = format!("Enroll in {course}");
    let mut tabs = 0;
    loop {
        let focused = first.client.active_element().await.expect("the focus");
        if focused
            .attr("aria-label")
            .await
            .expect("a label")
            .as_deref()
            == Some(label.as_str())
        {
            focused
                .send_keys(&Key::Enter.to_string())
                .await
                .expect("Enter");
            break;
        }
        tabs += 1;
        assert!(
            tabs <= 20,
            "Tab never reached the Enroll button of {course}"
        );
        focused.send_keys(&Key::Tab.to_string()).await.expect("Tab");
    }
    // Whichever stage the page shows first is captured; the log below proves both were shown.
    first
        .until_row("an answer to the enrollment", |r| {
            r.state == "provisional" || r.state == "confirmed"
        })
        .await;
    first.shot("02-provisional-or-confirmed.png").await;
    let seen = first
        .until("the seat confirmed", |s| {
            s.row.as_ref().is_some_and(|r| r.state == "confirmed")
        })
        .await;
    let row = seen.row.as_ref().expect("the row");
    assert_eq!(row.status, "confirmed");
    let provisional = format!("{course}: provisionally yours");
    let confirmed = format!("{course}: confirmed");
    let position = |needle: &str| seen.log.iter().position(|l| l.ends_with(needle));
    // The log lists the newest first: the confirmation above the provisional answer.
    match (position(&confirmed), position(&provisional)) {
        (Some(c), Some(p)) => assert!(c < p, "{:?}", seen.log),
        _ => panic!(
            "the page did not show both stages of the answer: {:?}",
            seen.log
        ),
    }
    first
        .until_row("the course full", |r| r.seats_left.starts_with("Full"))
        .await;
    first.shot("03-confirmed.png").await;

    // s2 signs in by pasting a token, and sees the course full.
    second.open(&api.base).await;
    second
        .find("#token")
        .await
        .send_keys(&token("s2"))
        .await
        .expect("pasting the token");
    second
        .find("#signin-submit")
        .await
        .click()
        .await
        .expect("signing in");
    second.signed_in().await;
    let row = second
        .until_row("the course full", |r| r.seats_left.starts_with("Full"))
        .await;
    assert_eq!(row.waitlist, "0 waiting");
    second.fits_the_width().await;
    second.shot("04-second-student-sees-it-full.png").await;

    // s2 joins the waitlist.
    second
        .button("enroll")
        .await
        .click()
        .await
        .expect("enrolling");
    // The provisional answer says "(provisional)" after the position; the final one does not.
    second
        .until_row("waitlisted, position 1, final", |r| {
            r.state == "waitlisted" && r.status == "waitlisted, position 1" && !r.enroll_disabled
        })
        .await;
    second
        .until_row("one waiting", |r| r.seats_left == "Full · 1 waiting")
        .await;
    second.shot("05-waitlisted.png").await;

    // s1 drops; s2's page shows the promotion as it happens, without a reload.
    first.button("drop").await.click().await.expect("dropping");
    first.until_row("dropped", |r| r.state == "dropped").await;
    first.shot("06-first-student-dropped.png").await;
    let seen = second
        .until("promoted", |s| {
            s.row.as_ref().is_some_and(|r| r.state == "promoted")
        })
        .await;
    assert_eq!(
        seen.row.as_ref().expect("the row").status,
        "promoted: the seat is yours"
    );
    assert!(seen.marker, "the page was reloaded");
    assert!(
        seen.log.iter().any(|l| l.ends_with(&format!(
            "{course}: you were promoted from the waitlist; the seat is yours"
        ))),
        "{:?}",
        seen.log
    );
    // The course list catches up within its refresh: still full, nobody waiting.
    second
        .until_row("the list refreshed after the promotion", |r| {
            r.seats_left == "Full" && r.waitlist == "0 waiting"
        })
        .await;
    second.shot("07-second-student-promoted.png").await;

    first.close().await;
    second.close().await;
    driver.stop().await;
    // The browsers' profiles are of no use after a passing run; the screenshots stay.
    let _ = std::fs::remove_dir_all(&profiles);
    gateway.stop().await.expect("the gateway stops");
    env.cleanup().await;
}
