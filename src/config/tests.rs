#![allow(clippy::result_large_err)]
use super::*;
use figment::Jail;

#[test]
fn precedence_defaults_file_env_flags() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            "model = \"/m/file\"\nmax_queue = 7\nsocket_mode = \"0640\"\nwarmup_iterations = 2\n",
        )?;
        jail.set_env("IV_MAX_QUEUE", "9");
        jail.set_env("IV_WARMUP_ITERATIONS", "3");
        let o = ConfigOverrides {
            warmup_iterations: Some(1),
            ..Default::default()
        };
        let c = Config::load(Some(Path::new("c.toml")), &o).map_err(|e| e.to_string())?;
        assert_eq!(c.model, "/m/file"); // file
        assert_eq!(c.max_queue, 9); // env over file
        assert_eq!(c.warmup_iterations, 1); // flag over env
        assert_eq!(c.socket_mode, SocketMode(0o640));
        assert_eq!(c.max_batch_size, 4); // default
        Ok(())
    });
}

#[test]
fn env_socket_mode_is_octal_and_unknown_keys_fail() {
    Jail::expect_with(|jail| {
        jail.set_env("IV_SOCKET_MODE", "0660");
        let c = Config::load(None, &ConfigOverrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.socket_mode, SocketMode(0o660));
        jail.set_env("IV_SOCKET_MODE", "660");
        let c = Config::load(None, &ConfigOverrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(c.socket_mode, SocketMode(0o660));
        jail.set_env("IV_SOCKET_MODE", "0999");
        assert!(Config::load(None, &ConfigOverrides::default()).is_err());
        jail.set_env("IV_SOCKET_MODE", "04660");
        let e = Config::load(None, &ConfigOverrides::default()).expect_err("setuid bit");
        assert!(e.to_string().contains("beyond 0777"), "{e}");
        jail.set_env("IV_SOCKET_MODE", "0600");
        jail.set_env("IV_NOT_A_SETTING", "1");
        let e = Config::load(None, &ConfigOverrides::default()).expect_err("unknown key");
        assert!(e.to_string().contains("not_a_setting"), "{e}");
        Ok(())
    });
}

#[test]
fn toml_socket_modes_are_numbers_and_text_is_octal() {
    // (TOML value, mode or None for an error)
    let cases: [(&str, Option<u32>); 8] = [
        ("0o660", Some(0o660)),
        ("0o777", Some(0o777)),
        ("0o600", Some(0o600)),
        ("384", Some(0o600)),
        ("\"0640\"", Some(0o640)),
        ("\"0o640\"", Some(0o640)),
        ("0o4660", None),
        ("\"0680\"", None),
    ];
    for (value, want) in cases {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", &format!("socket_mode = {value}\n"))?;
            let got = Config::load(Some(Path::new("c.toml")), &ConfigOverrides::default());
            match (want, got) {
                (Some(m), Ok(c)) => assert_eq!(c.socket_mode, SocketMode(m), "{value}"),
                (None, Err(_)) => {}
                (want, got) => panic!("{value}: want {want:?}, got {got:?}"),
            }
            Ok(())
        });
    }
}

#[test]
fn numbers_beyond_what_the_daemon_honours_and_bad_log_levels_are_refused() {
    for (key, value) in [
        ("IV_MAX_QUEUE", "18446744073709551615"),
        ("IV_MAX_CONNECTIONS", "18446744073709551615"),
        ("IV_QUERY_CACHE_SIZE", "18446744073709551615"),
        ("IV_MAX_BATCH_SIZE", "100000"),
        ("IV_REQUEST_TIMEOUT_MS", "18446744073709551615"),
        ("IV_MAX_QUERY_BYTES", "5000"),
        ("IV_LOG_LEVEL", "lots=of=noise"),
        ("IV_STREAM_NMS", "1.5"),
        ("IV_STREAM_TRACK_MATCH_IOU", "-0.1"),
        ("IV_STREAM_TRACK_DUPLICATE_IOU", "2"),
        ("IV_STREAM_TRACK_MATCH_DISTANCE", "11"),
    ] {
        Jail::expect_with(|jail| {
            jail.set_env(key, value);
            let e = Config::load(None, &ConfigOverrides::default()).expect_err(key);
            let field = key.trim_start_matches("IV_").to_ascii_lowercase();
            assert!(e.to_string().contains(&field), "{key}: {e}");
            Ok(())
        });
    }
    Jail::expect_with(|jail| {
        jail.set_env("IV_MAX_QUEUE", "1048576");
        jail.set_env("IV_LOG_LEVEL", "intelligent_video=debug,info");
        Config::load(None, &ConfigOverrides::default()).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn other_access_is_allowed_with_a_warning() {
    let mut c = Config::default();
    assert!(c.warnings().is_empty());
    c.socket_mode = SocketMode(0o666);
    let w = c.warnings();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("0666") && w[0].contains("every local user"),
        "{w:?}"
    );
}

#[test]
fn remote_http_needs_opt_in_and_enums_are_checked() {
    Jail::expect_with(|jail| {
        jail.set_env("IV_HTTP_ADDR", "0.0.0.0:8000");
        let e = Config::load(None, &ConfigOverrides::default()).expect_err("remote");
        assert!(e.to_string().contains("IV_HTTP_ALLOW_REMOTE"), "{e}");
        jail.set_env("IV_HTTP_ALLOW_REMOTE", "true");
        assert!(Config::load(None, &ConfigOverrides::default()).is_ok());
        jail.set_env("IV_TENSORRT_PRECISION", "fp8");
        assert!(Config::load(None, &ConfigOverrides::default()).is_err());
        Ok(())
    });
}

#[test]
fn bf16_is_a_cpu_precision_of_arm64_cpus_with_bf16_only() {
    Jail::expect_with(|jail| {
        jail.set_env("IV_TENSORRT_PRECISION", "bf16");
        let e = Config::load(None, &ConfigOverrides::default()).expect_err("trt bf16");
        assert!(e.to_string().contains("not a TensorRT precision"), "{e}");
        jail.set_env("IV_TENSORRT_PRECISION", "fp16");
        jail.set_env("IV_CPU_PRECISION", "bf16");
        let r = Config::load(None, &ConfigOverrides::default());
        match crate::vocab::Precision::Bf16.cpu_support() {
            Ok(()) => assert!(r.is_ok(), "{:?}", r.err()),
            Err(why) => {
                let e = r.expect_err("bf16 without BF16").to_string();
                assert!(e.contains(&why), "{e}");
                #[cfg(not(target_arch = "aarch64"))]
                assert!(why.contains("arm64"), "{why}");
            }
        }
        Ok(())
    });
}

#[test]
fn openvino_settings_are_checked() {
    Jail::expect_with(|jail| {
        jail.set_env("IV_OPTIMIZATION_BACKEND", "openvino");
        jail.set_env("IV_OPENVINO_PATH", "/opt/ov");
        jail.set_env("IV_OPENVINO_DEVICE", "GPU.1");
        let c = Config::load(None, &ConfigOverrides::default()).expect("loads");
        assert_eq!(c.optimization_backend, BackendPreference::Openvino);
        assert_eq!(c.engine().openvino_path, Some(PathBuf::from("/opt/ov")));
        assert_eq!(c.engine().openvino_device, "GPU.1");
        jail.set_env("IV_OPENVINO_DEVICE", "CPU; rm -rf /");
        let e = Config::load(None, &ConfigOverrides::default()).expect_err("device");
        assert!(e.to_string().contains("openvino_device"), "{e}");
        jail.set_env("IV_OPENVINO_DEVICE", "CPU");
        jail.set_env("IV_OPENVINO_PRECISION", "int8");
        let e = Config::load(None, &ConfigOverrides::default()).expect_err("int8");
        assert!(e.to_string().contains("not an OpenVINO precision"), "{e}");
        jail.set_env("IV_OPENVINO_PRECISION", "bf16");
        let r = Config::load(None, &ConfigOverrides::default());
        match crate::cpu::bf16_support() {
            Ok(()) => assert!(r.is_ok(), "{:?}", r.err()),
            Err(why) => {
                let e = r.expect_err("bf16 without BF16").to_string();
                assert!(e.contains("openvino_precision") && e.contains(&why), "{e}");
            }
        }
        // On another device the CPU's instructions do not matter.
        jail.set_env("IV_OPENVINO_DEVICE", "GPU");
        assert!(Config::load(None, &ConfigOverrides::default()).is_ok());
        Ok(())
    });
}

#[test]
fn toml_round_trips() {
    let c = Config::default();
    let back: Config = toml::from_str(&c.to_toml()).expect("parses");
    assert_eq!(back, c);
}

#[test]
fn stream_rules_mqtt_and_webhooks_come_from_the_file_and_are_checked() {
    figment::Jail::expect_with(|jail| {
        let file = r#"
events_update_interval_s = 0

[[streams]]
name = "dock"
url = "rtsp://cam/1"
queries = ["a forklift"]
zones.bay = { polygon = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]], inertia = 2, loiter_s = 30 }
lines.door = { points = [[0.5, 0.0], [0.5, 1.0]], labels = ["a forklift"] }

[mqtt]
url = "mqtts://broker.lan"
username = "iv"
protocol = "5"

[[webhooks]]
url = "https://hooks.example/iv"
events = ["line_cross"]
"#;
        jail.create_file("c.toml", file)?;
        let c = Config::load(Some(Path::new("c.toml")), &ConfigOverrides::default())
            .map_err(|e| e.to_string())?;
        let s = &c.streams[0];
        assert_eq!(s.zones["bay"].inertia, 2);
        assert_eq!(s.zones["bay"].loiter_s, Some(30.0));
        assert_eq!(s.lines["door"].labels, vec!["a forklift".to_string()]);
        let m = c.mqtt.as_ref().expect("[mqtt]");
        assert_eq!(
            (m.topic_prefix.as_str(), m.home_assistant),
            ("intelligent-video", false)
        );
        assert_eq!(m.broker().map(|b| (b.port, b.tls)), Ok((8883, true)));
        assert_eq!(m.protocol, super::mqtt::MqttProtocol::V5);
        assert_eq!(c.webhooks[0].events, vec!["line_cross".to_string()]);
        assert_eq!(c.events_update_interval_s, 0.0);
        // Round trip through `config check`'s TOML.
        let back: Config = toml::from_str(&c.to_toml()).map_err(|e| e.to_string())?;
        assert_eq!(back, c);

        let bad = file.replace("[0.9, 0.9]]", "[0.9, 0.9], [0.1, 0.9], [0.9, 0.1]]");
        jail.create_file("c.toml", &bad)?;
        let e = Config::load(Some(Path::new("c.toml")), &ConfigOverrides::default())
            .expect_err("a self-crossing zone");
        assert!(
            e.to_string()
                .contains("stream \"dock\": zone \"bay\": polygon crosses itself"),
            "{e}"
        );
        let bad = file.replace("events = [\"line_cross\"]", "events = [\"crossing\"]");
        jail.create_file("c.toml", &bad)?;
        let e = Config::load(Some(Path::new("c.toml")), &ConfigOverrides::default())
            .expect_err("an unknown event type");
        assert!(
            e.to_string().contains("unknown event type \"crossing\""),
            "{e}"
        );
        let bad = file.replace("mqtts://broker.lan", "tcp://broker.lan");
        jail.create_file("c.toml", &bad)?;
        let e = Config::load(Some(Path::new("c.toml")), &ConfigOverrides::default())
            .expect_err("a bad broker URL");
        assert!(e.to_string().starts_with("invalid setting mqtt:"), "{e}");
        Ok(())
    });
}
