//! Each driver's settings, parsed by one function per driver.
//!
//! A task's driver-specific part (`command` and `args` where the driver
//! takes them, the `[task.config]` table, the resources a VM is sized by)
//! is read here and nowhere else: [`crate::job::JobSpec::validate`] calls
//! [`parse`] so that `herd job run` and the coordinator refuse a bad spec at
//! submit (the spec-file parser turns the field into file:line), and the node's
//! drivers call the same function for their driver before they start
//! anything, so what submit accepted is exactly what the node runs. Errors
//! name the field as a spec file writes it (`task.config.max_batch`).

pub mod inference;

use crate::job::TaskSpec;
use crate::validate::FieldError;
use crate::vm::{SimVmSettings, VmSettings};

pub use inference::InferenceSettings;

/// The `exec` driver's name in job specs.
pub const EXEC: &str = "exec";
/// The `dljob` driver's name in job specs.
pub const DLJOB: &str = "dljob";
/// The `vm` driver's name in job specs.
pub const VM: &str = "vm";
/// The `simvm` driver's name in job specs.
pub const SIMVM: &str = "simvm";
/// The `inference` driver's name in job specs.
pub const INFERENCE: &str = "inference";

/// A task's settings, typed by its driver: what [`parse`] returns, so a
/// caller that handles every driver cannot forget one.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverSettings {
    /// A plain process.
    Exec(ExecSettings),
    /// A training job.
    Dljob(DljobSettings),
    /// A QEMU virtual machine.
    Vm(VmSettings),
    /// A SIMULATED VM.
    SimVm(SimVmSettings),
    /// A SIMULATED LLM engine.
    Inference(InferenceSettings),
}

/// A validated `exec` task: the program it runs (its arguments, environment
/// and directory are generic task fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// The program: a path, or a name looked up in the task's `PATH`.
    pub command: String,
}

/// A validated `dljob` task: the trainer it runs, `None` for herd's own
/// `herd toy-train` (then `args` are toy-train's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DljobSettings {
    /// The user's trainer, when given.
    pub command: Option<String>,
}

/// Parses `task`'s settings for its driver. Errors name the field; an
/// unknown driver is refused on `task.driver`.
pub fn parse(task: &TaskSpec) -> Result<DriverSettings, FieldError> {
    match task.driver.as_str() {
        EXEC => exec(task).map(DriverSettings::Exec),
        DLJOB => dljob(task).map(DriverSettings::Dljob),
        VM => vm(task).map(DriverSettings::Vm),
        SIMVM => simvm(task).map(DriverSettings::SimVm),
        INFERENCE => inference(task).map(DriverSettings::Inference),
        other => Err(FieldError::new(
            "task.driver",
            format!(
                "unknown driver {other:?}; known drivers: {}",
                crate::job::KNOWN_DRIVERS.join(", ")
            ),
        )),
    }
}

/// The `exec` driver's settings: a command, and no `[task.config]`.
pub fn exec(task: &TaskSpec) -> Result<ExecSettings, FieldError> {
    let command = match task.command.as_deref() {
        None => {
            return Err(FieldError::new(
                "task.command",
                "the exec driver needs a command to run, e.g. command = \"/bin/sleep\"",
            ))
        }
        Some(command) => given_command(command)?,
    };
    no_config(
        task,
        "the exec driver takes no settings; use command, args and env",
    )?;
    Ok(ExecSettings { command })
}

/// The `dljob` driver's settings: an optional trainer, and no `[task.config]`.
pub fn dljob(task: &TaskSpec) -> Result<DljobSettings, FieldError> {
    let command = task.command.as_deref().map(given_command).transpose()?;
    no_config(
        task,
        "the dljob driver takes no settings; pass the trainer's flags in args",
    )?;
    Ok(DljobSettings { command })
}

/// The `vm` driver's settings: QEMU is run for the task, sized by its
/// resources and described by `[task.config]` ([`VmSettings::parse`]).
pub fn vm(task: &TaskSpec) -> Result<VmSettings, FieldError> {
    if task.command.is_some() {
        return Err(FieldError::new(
            "task.command",
            "a VM runs QEMU; describe it in [task.config] (kernel, disk...), not command",
        ));
    }
    VmSettings::parse(&task.config, &task.resources)
}

/// The `simvm` driver's settings: herd's simulator is run for the task,
/// sized by its memory ([`SimVmSettings::parse`]).
pub fn simvm(task: &TaskSpec) -> Result<SimVmSettings, FieldError> {
    if task.command.is_some() {
        return Err(FieldError::new(
            "task.command",
            "a simulated VM runs herd's own simulator; set [task.config] dirty_rate, not command",
        ));
    }
    SimVmSettings::parse(&task.config, &task.resources)
}

/// The `inference` driver's settings: herd's simulated engine is run for the
/// task, so it takes neither `command` nor `args`, only `[task.config]`
/// ([`InferenceSettings::from_config`]).
pub fn inference(task: &TaskSpec) -> Result<InferenceSettings, FieldError> {
    let runs_itself = "the inference driver runs the simulated engine itself; leave it out \
                       and set [task.config] instead";
    if task.command.is_some() {
        return Err(FieldError::new("task.command", runs_itself));
    }
    if !task.args.is_empty() {
        return Err(FieldError::new("task.args", runs_itself));
    }
    InferenceSettings::from_config(&task.config)
}

/// A command given in the spec: it names a program.
fn given_command(command: &str) -> Result<String, FieldError> {
    if command.trim().is_empty() {
        return Err(FieldError::new(
            "task.command",
            "must not be empty; give the program to run",
        ));
    }
    Ok(command.to_string())
}

fn no_config(task: &TaskSpec, message: &str) -> Result<(), FieldError> {
    if task.config.is_empty() {
        Ok(())
    } else {
        Err(FieldError::new("task.config", message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Resources, MIB};

    fn task(driver: &str, command: Option<&str>, config: &[(&str, &str)]) -> TaskSpec {
        TaskSpec {
            driver: driver.into(),
            command: command.map(String::from),
            args: Vec::new(),
            env: Default::default(),
            workdir: None,
            resources: Resources {
                cpu_millis: 1000,
                memory_bytes: 128 * MIB,
                gpus: 0,
                gpu_model: None,
            },
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn every_known_driver_has_a_parser() {
        for driver in crate::job::KNOWN_DRIVERS {
            let err = parse(&task(driver, Some(""), &[]))
                .err()
                .map(|e| e.field)
                .unwrap_or_default();
            assert_ne!(err, "task.driver", "{driver} has no parser");
        }
        assert_eq!(
            parse(&task("docker", None, &[])).map_err(|e| e.field),
            Err("task.driver".to_string())
        );
    }

    #[test]
    fn each_parser_returns_its_typed_settings() {
        assert_eq!(
            parse(&task(EXEC, Some("/bin/true"), &[])),
            Ok(DriverSettings::Exec(ExecSettings {
                command: "/bin/true".into()
            }))
        );
        assert_eq!(
            parse(&task(DLJOB, None, &[])),
            Ok(DriverSettings::Dljob(DljobSettings { command: None }))
        );
        let Ok(DriverSettings::Vm(vm)) = parse(&task(VM, None, &[("kernel", "/k")])) else {
            panic!("a kernel VM is valid");
        };
        assert_eq!((vm.memory_mib, vm.vcpus), (128, 1));
        let Ok(DriverSettings::SimVm(sim)) = parse(&task(SIMVM, None, &[("seed", "3")])) else {
            panic!("a simulated VM is valid");
        };
        assert_eq!(sim.seed, 3);
        let Ok(DriverSettings::Inference(engine)) =
            parse(&task(INFERENCE, None, &[("max_batch", "4")]))
        else {
            panic!("an engine is valid");
        };
        assert_eq!(engine.max_batch, 4);
    }

    #[test]
    fn bad_driver_fields_are_named() {
        for (task, field) in [
            (task(EXEC, None, &[]), "task.command"),
            (task(EXEC, Some("  "), &[]), "task.command"),
            (task(EXEC, Some("/x"), &[("k", "v")]), "task.config"),
            (task(DLJOB, None, &[("steps", "3")]), "task.config"),
            (task(VM, Some("/q"), &[("kernel", "/k")]), "task.command"),
            (task(VM, None, &[("kernel", "k")]), "task.config.kernel"),
            (task(SIMVM, Some("/s"), &[]), "task.command"),
            (task(SIMVM, None, &[("seed", "x")]), "task.config.seed"),
            (task(INFERENCE, Some("/e"), &[]), "task.command"),
            (
                task(INFERENCE, None, &[("max_batch", "0")]),
                "task.config.max_batch",
            ),
        ] {
            assert_eq!(
                parse(&task).map(|_| ()).map_err(|e| e.field),
                Err(field.to_string()),
                "{task:?}"
            );
        }
        let mut with_args = task(INFERENCE, None, &[]);
        with_args.args = vec!["--fast".into()];
        assert_eq!(
            inference(&with_args).map(|_| ()).map_err(|e| e.field),
            Err("task.args".to_string())
        );
    }
}
