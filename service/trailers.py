"""What a StreamFrames call carries beyond its messages: the trailing metadata keys.

The .proto cannot declare metadata, so the server and the clients of this
package read the key from here.
"""

# A completed call's trailer: frames the server skipped after its last prediction
# (resampled or dropped behind), which no Prediction's skipped_frames counts.
SKIPPED_FRAMES = "actionstream-skipped-frames"
