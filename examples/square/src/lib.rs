//! `square`: squares a list of numbers: POST `{"numbers":[2,3,4]}` and get `{"squares":[4,9,16]}`.
//!
//! Call it with `curl http://127.0.0.1:8080/fn/square -d '{"numbers":[2,3,4]}'`.
//!
//! Integers stay integers (`i64`); if any input is not an integer, every
//! square is a float. An overflowing square, a body that is not JSON, a
//! missing `numbers` array or an element that is not a number gets a 400, and
//! any method but POST a 405, each with `{"error":"..."}` as
//! `application/json`.

use guest_util::{Request, Response};
use serde_json::{Number, Value, json};

fn handle(request: Request) -> Response {
    if request.method() != "POST" {
        return Response::error(
            405,
            format!("method {} not allowed: use POST", request.method()),
        )
        .header("allow", "POST");
    }
    let body = match request.body() {
        Ok(body) => body,
        Err(response) => return response,
    };
    match squares(body) {
        Ok(squares) => Response::json(200, &json!({ "squares": squares })),
        Err(message) => Response::error(400, message),
    }
}

/// The squares of the `numbers` in `body`, or a message saying what is wrong.
fn squares(body: &[u8]) -> Result<Vec<Number>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("the body is not valid JSON: {err}"))?;
    let Value::Object(object) = value else {
        return Err(format!(
            "the body must be a JSON object like {{\"numbers\":[2,3,4]}}, not {}",
            kind(&value)
        ));
    };
    let numbers = match object.get("numbers") {
        None => return Err("missing field `numbers`".into()),
        Some(Value::Array(numbers)) => numbers,
        Some(other) => {
            return Err(format!(
                "field `numbers` must be an array, not {}",
                kind(other)
            ));
        }
    };
    let numbers = numbers
        .iter()
        .enumerate()
        .map(|(index, element)| match element {
            Value::Number(number) => Ok(number),
            other => Err(format!("numbers[{index}] is {}, not a number", kind(other))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let all_integers = numbers.iter().all(|n| n.is_i64() || n.is_u64());
    numbers
        .iter()
        .enumerate()
        .map(|(index, number)| {
            let overflow = || format!("the square of numbers[{index}] ({number}) overflows");
            if all_integers {
                let n = number.as_i64().ok_or_else(overflow)?;
                n.checked_mul(n).map(Number::from).ok_or_else(overflow)
            } else {
                let n = number.as_f64().ok_or_else(overflow)?;
                Number::from_f64(n * n).ok_or_else(overflow)
            }
        })
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

guest_util::export_handler!(handle);
